"""Shared fixtures: small fake MNIST-format IDX folders written to tmp_path;
the Hypothesis profile for CI."""
import gzip
import os

import numpy as np
import pytest
from hypothesis import settings

# On CI, Hypothesis replays the same examples every run (derandomize): a red
# build then always means a change broke something, never an unlucky draw.
# Locally, each run explores new examples.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# dtype -> IDX type code
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array):
    """The IDX encoding of ``array`` (header + big-endian payload)."""
    a = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[a.dtype], a.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_bytes(path, data, gz=False):
    """Write ``data`` to ``path``, gzipped when ``gz``; returns ``path``."""
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_folder(folder, n_train=40, n_test=20, size=(28, 28), num_classes=10,
                    gz=True, sep="-", seed=0):
    """A folder with the four IDX files of a random MNIST-like dataset.

    ``sep`` "-" gives ``train-images-idx3-ubyte``, "." gives ``train-images.idx3-ubyte``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        labels = (np.arange(n) % num_classes).astype(np.uint8)
        write_bytes(folder / f"{split}-images{sep}idx3-ubyte{suffix}", idx_bytes(images), gz)
        write_bytes(folder / f"{split}-labels{sep}idx1-ubyte{suffix}", idx_bytes(labels), gz)
    return folder


@pytest.fixture
def idx_folder(tmp_path):
    """A small gzipped Fashion-MNIST-like folder: 40 train / 20 test 28x28 images, 10 classes."""
    return make_idx_folder(tmp_path / "fake-fashion")


@pytest.fixture
def make_idx_dir(tmp_path):
    """Factory: ``make_idx_dir(name="data", **kwargs)`` -> folder (see make_idx_folder)."""
    def make(name="data", **kwargs):
        return make_idx_folder(tmp_path / name, **kwargs)
    return make
