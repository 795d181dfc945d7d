"""MNIST-format IDX folders: today's loader in :mod:`cnn.data`, re-exported here so
every data source has its module (``cnn.datasets.idx``, ``.folder``, ``.npz``)."""
from pathlib import Path

from cnn.data import DataError, Dataset, find_idx_file, load_dataset, read_idx

__all__ = ["Dataset", "DataError", "is_idx_folder", "is_idx_test_folder", "load_dataset",
           "read_idx"]


def is_idx_folder(path):
    """True when ``path`` is a folder holding at least the training images IDX file."""
    path = Path(path)
    return path.is_dir() and find_idx_file(path, "train", "images") is not None


def is_idx_test_folder(path):
    """True when ``path`` is a folder holding at least the test images IDX file
    (``t10k-images``): enough for ``load_dataset(path, test_only=True)``."""
    path = Path(path)
    return path.is_dir() and find_idx_file(path, "t10k", "images") is not None
