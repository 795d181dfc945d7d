"""Dataset: the train and test arrays of an IDX folder, with its class names."""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset loaded from an IDX folder.

    - ``train_images``: (N, H, W) uint8, pixels 0-255 (28x28 for (Fashion-)MNIST)
    - ``train_labels``: (N,) int64 in [0, len(class_names))
    - ``test_images``: (M, H, W) uint8, same H, W as the training images
    - ``test_labels``: (M,) int64
    - ``class_names``: tuple of str, one per class
    - ``name``: the folder's name (``"fashion-mnist"`` for the default folder)
    - ``source``: the folder's absolute path
    """
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    name: str
    source: str

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        """(H, W) of every image."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, source={self.source!r}, "
                f"train={self.train_images.shape}, test={self.test_images.shape}, "
                f"classes={self.num_classes})")
