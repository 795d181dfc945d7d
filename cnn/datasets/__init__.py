"""Datasets by source, detected from ``data_dir``:

- a ``.npz`` file in the Keras layout (:mod:`cnn.datasets.npz`)
- a folder of MNIST-format IDX files (:mod:`cnn.datasets.idx`, today's ``cnn.data``)
- an image-folder tree (:mod:`cnn.datasets.folder`), decoded once into a cache
  (:mod:`cnn.datasets.cache`)

Every loader returns an object with ``train_images``, ``train_labels``,
``test_images``, ``test_labels``, ``class_names``, ``num_classes``,
``image_shape`` (H, W), ``name`` and ``source``; images are uint8 (N, H, W) for
grayscale and channels-first (N, C, H, W) for colour, the kernels' layout.
"""
import os

from cnn.data import DATA_DIR_ENV, DEFAULT_DATA_DIR, DataError
from cnn.datasets.base import ImageDataset
from cnn.datasets.folder import is_image_folder, load_folder
from cnn.datasets.idx import is_idx_folder, load_dataset
from cnn.datasets.npz import load_npz

__all__ = ["DataError", "ImageDataset", "load_data", "input_shape_of", "record_of"]


def load_data(data_dir=None, image_size=None, channels=None, test_fraction=0.1, seed=0,
              cache_dir=None, strict=False, progress=None, log=None):
    """Load ``data_dir`` (default: ``CNN_DATA_DIR``, else Fashion-MNIST), whatever its source.

    The image-folder options (``image_size`` (H, W), ``channels``, ``test_fraction``,
    ``seed``, ``cache_dir``, ``strict``) are documented in :func:`load_folder`.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    path = os.fspath(data_dir)
    if os.path.isfile(path) and path.lower().endswith(".npz"):
        return load_npz(path)
    if not os.path.isdir(path) or is_idx_folder(path) or not is_image_folder(path):
        return load_dataset(path)       # IDX, or its clear "missing files" message
    return load_folder(path, image_size=image_size, channels=channels,
                       test_fraction=test_fraction, seed=seed, cache_dir=cache_dir,
                       strict=strict, progress=progress, log=log)


def input_shape_of(data):
    """(C, H, W) of a dataset from any source."""
    return getattr(data, "input_shape", None) or (1,) + tuple(data.image_shape)


def record_of(data):
    """What the weights file records about the data (empty for IDX: as today)."""
    return dict(getattr(data, "meta", None) or {})
