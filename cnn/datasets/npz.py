"""A NumPy ``.npz`` in the layout ``keras.datasets.*.load_data()`` returns.

Members ``x_train``, ``y_train``, ``x_test``, ``y_test``: images uint8 (N, H, W)
or channels-last (N, H, W, C) with C 1 or 3, labels (N,) or (N, 1) integers;
optional ``class_names`` (strings). Colour images are transposed once to
channels-first (N, C, H, W), the layout of the kernels.
"""
import os
import zipfile

import numpy as np

from cnn.data import DataError
from cnn.datasets.base import ImageDataset
from cnn.images.policy import upload_record

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _images(path, key, x):
    if x.dtype != np.uint8:
        raise DataError(f"{path}: {key} must be uint8 pixels 0-255, got {x.dtype}")
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    if x.ndim == 4 and x.shape[3] == 3:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim != 3:
        raise DataError(f"{path}: {key} must be (N, H, W) or (N, H, W, 1 or 3) "
                        f"channels-last, got shape {x.shape}")
    if 0 in x.shape:
        raise DataError(f"{path}: {key} is empty, shape {x.shape}")
    return x


def _labels(path, key, y, n, num_classes):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise DataError(f"{path}: {key} must be integer labels (N,) or (N, 1), got "
                        f"{y.dtype} {y.shape}")
    if len(y) != n:
        raise DataError(f"{path}: {key} has {len(y)} labels for {n} images")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: {key} must lie in [0, {num_classes}), found values in "
                        f"[{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def load_npz(path):
    """Load a Keras-layout ``.npz`` as an :class:`ImageDataset`."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in REQUIRED if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing {', '.join(missing)} (a Keras-layout .npz "
                                f"holds x_train, y_train, x_test, y_test)")
            arrays = {k: f[k] for k in REQUIRED}
            names = f["class_names"] if "class_names" in f.files else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file: {exc}") from None
    x_train = _images(path, "x_train", arrays["x_train"])
    x_test = _images(path, "x_test", arrays["x_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{path}: x_train images are {x_train.shape[1:]} but x_test "
                        f"images are {x_test.shape[1:]}")
    if names is not None:
        if names.dtype.kind not in "US" or names.ndim != 1:
            raise DataError(f"{path}: class_names must be a 1-D array of strings")
        class_names = tuple(str(n) for n in names.tolist())
    else:
        top = max(int(np.max(arrays["y_train"], initial=0)),
                  int(np.max(arrays["y_test"], initial=0)))
        class_names = tuple(str(i) for i in range(top + 1))
    K = len(class_names)
    y_train = _labels(path, "y_train", arrays["y_train"], len(x_train), K)
    y_test = _labels(path, "y_test", arrays["y_test"], len(x_test), K)
    C = 1 if x_train.ndim == 3 else x_train.shape[1]
    source = os.path.abspath(path)
    meta = {"source_kind": "npz", "input_shape": [C, *x_train.shape[-2:]],
            "channel_order": "L" if C == 1 else "RGB", "resize": None,
            # (light objects on black: uploads as Fashion-MNIST; else as photos)
            **upload_record(x_train)}
    return ImageDataset(x_train, y_train, x_test, y_test, class_names,
                        os.path.splitext(os.path.basename(source))[0], source, meta)
