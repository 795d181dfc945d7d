"""How a model turns an image file into its input: read from its weights file.

Two pipelines exist (:func:`cnn.images.decode_image`):

* ``fit="pad"``: Fashion-MNIST style, grayscale. The object is fitted inside
  the input and padded with the background colour; ``invert="auto"`` makes a
  dark object on a light background light on black. Models trained on IDX
  files, and weights files older than this record, use it.
* ``fit="crop"``: the pipeline that decoded the training images of an image
  folder (resize the short side, centre-crop; grayscale or RGB), so an upload
  becomes exactly what training saw.

The automatic inversion is only for models whose training images are light
objects on black (:func:`light_on_black`): for those, a photo on a white
background is inverted to match. For ordinary photos it is off ("never"):
inverting them would only hurt. The weights file says which (the ``fit`` and
``invert`` of its data record, written by ``python -m cnn.train``).
"""
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cnn.images.convert import _border_sums

if TYPE_CHECKING:   # a hint only: cnn.model need not load with cnn.images
    from cnn.model import Sequential

#: A training set is "light objects on black" when the mean of its images'
#: 1-pixel borders is at most this (Fashion-MNIST: 0.4; photos of objects on
#: white: 200+; ordinary photos: around 100).
DARK_BORDER = 32
_SAMPLE = 2048   # images read to decide (a memory map need not be read whole)


class UploadPolicy(NamedTuple):
    size: tuple        # (height, width)
    channels: int      # 1 or 3
    fit: str           # "pad" or "crop"
    invert: object     # the default of the invert option: "auto" or False

    def decode_options(self, invert=None):
        """Keyword arguments of decode_image/decode_images; ``invert`` None
        means the model's own default."""
        return {"size": self.size, "channels": self.channels, "fit": self.fit,
                "invert": self.invert if invert is None else invert}

    def describe(self):
        """The JSON form (service metadata)."""
        return {"channels": self.channels, "height": self.size[0], "width": self.size[1],
                "color": "grayscale" if self.channels == 1 else "RGB", "fit": self.fit,
                "invert": "auto" if self.invert == "auto" else "never"}


def light_on_black(images):
    """Whether uint8 training images (N, H, W) or (N, C, H, W) are light
    objects on a black background: only grayscale sets can be."""
    images = np.asarray(images[:_SAMPLE]) if len(images) > _SAMPLE else np.asarray(images)
    if images.ndim != 3 or len(images) == 0:
        return False
    sums, count = _border_sums(images)
    return int(sums.sum()) <= DARK_BORDER * count * len(images)


def upload_record(images, fit=None):
    """The ``fit`` and ``invert`` entries of a data record, for training images;
    ``fit`` None: "pad" for light objects on black (Fashion-MNIST style), else
    "crop"."""
    dark = light_on_black(images)
    return {"fit": fit or ("pad" if dark else "crop"), "invert": "auto" if dark else "never"}


def upload_policy(model: "Sequential") -> UploadPolicy:
    """The :class:`UploadPolicy` of a loaded (or built) model."""
    channels, height, width = (int(s) for s in model.input_shape)
    record = (getattr(model, "summary_info", None) or {}).get("data") or {}
    fit = record.get("fit")
    if fit not in ("pad", "crop"):
        # IDX-trained and older files: Fashion-MNIST style; a colour model from
        # before this record was a .npz or a folder: crop.
        fit = "pad" if channels == 1 and record.get("source_kind") != "folder" else "crop"
    invert = record.get("invert")
    if invert not in ("auto", "never"):
        invert = "auto" if fit == "pad" else "never"
    return UploadPolicy((height, width), channels, fit, "auto" if invert == "auto" else False)
