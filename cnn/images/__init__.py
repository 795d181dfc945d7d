"""Image files and raw pixel arrays as model input, one way for every caller.

The prediction CLI (``python -m cnn.predict``) and the HTTP service both turn
what a user sends into the arrays the network was trained on, the way the
model's weights file says (:func:`upload_policy`): for models trained on an
image folder, the very function that decoded the training images
(``fit="crop"``, grayscale or RGB); for Fashion-MNIST-style models, 28x28 uint8
grayscale, a LIGHT object on a BLACK background (``fit="pad"``).

* :func:`decode_image` / :func:`decode_images` take encoded image files (bytes
  or paths) in any common format and mode and return uint8 arrays (H, W) /
  (N, H, W), or (H, W, 3) / (N, H, W, 3) for RGB.
* :func:`pixels_from_array` takes raw pixels (nested lists from JSON, or an
  ndarray) and returns the float32 (N, 1, H, W) batch in [0, 1] that the
  network reads; ``decode_images(...)[:, None] / 255`` is the same thing for
  files.

Untrusted input is expected: bad files raise :class:`ImageError` (a
ValueError) whose message names the image and the problem; the pixel count is
checked from the header before anything is decoded; only an allow-list of
formats is ever parsed.

``size`` is always (height, width), the shape of the returned arrays.

The package, one idea a module: ``limits`` (formats, pixels per image and per
batch), ``errors``, ``options`` (argument checks), ``decode`` (decode_image,
decode_images: open within the limits, load), ``png`` (the plain-PNG fast
path), ``convert`` (the "pad" pipeline: reduce, grey, invert, fit), ``crop``
(the "crop" pipeline of folder-trained models), ``policy`` (which pipeline a
model takes), ``pixels`` (raw arrays),
``_pillow`` (Pillow on first use, strict truncation).
"""
from cnn.images.decode import decode_image, decode_images
from cnn.images.errors import ImageError, PixelBudgetError
from cnn.images.limits import ALLOWED_FORMATS, MAX_PIXELS, MAX_TOTAL_PIXELS
from cnn.images.pixels import pixels_from_array
from cnn.images.policy import UploadPolicy, upload_policy

__all__ = ["ALLOWED_FORMATS", "MAX_PIXELS", "MAX_TOTAL_PIXELS", "ImageError", "PixelBudgetError",
           "UploadPolicy", "decode_image", "decode_images", "pixels_from_array", "upload_policy"]
