"""The dataset object every source returns (a superset of :class:`cnn.data.Dataset`)."""
from dataclasses import dataclass, field

import numpy as np

from cnn.data import Dataset


@dataclass(frozen=True, eq=False)
class ImageDataset(Dataset):
    """Images and labels from an image folder or a ``.npz`` file.

    - ``train_images``/``test_images``: uint8, (N, H, W) for grayscale (exactly as
      the IDX loader gives them) or (N, C, H, W) for colour. Channels first
      because the kernels take (N, C, H, W): no transpose per batch. Often a
      read-only memory map of the decode cache.
    - ``train_labels``/``test_labels``: (N,) int64 in [0, num_classes)
    - ``class_names``: tuple of str; ``name``, ``source`` as in ``cnn.data.Dataset``
    - ``meta``: what the weights file records (input shape, channel order,
      resize policy, the split, skipped files)
    - ``val_images``/``val_labels``: a folder's own ``val/`` split, else None
    """
    meta: dict = field(default_factory=dict)
    val_images: np.ndarray = None       # DIR/val/<class>, when the folder has one
    val_labels: np.ndarray = None

    @property
    def channels(self):
        return 1 if self.train_images.ndim == 3 else int(self.train_images.shape[1])

    @property
    def image_shape(self):
        """(H, W) of every image."""
        return tuple(self.train_images.shape[-2:])

    @property
    def input_shape(self):
        """(C, H, W): what a model trained on it takes."""
        return (self.channels,) + self.image_shape

    def __repr__(self):
        return (f"ImageDataset(name={self.name!r}, source={self.source!r}, "
                f"train={self.train_images.shape}, test={self.test_images.shape}, "
                f"classes={self.num_classes})")
