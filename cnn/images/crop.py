"""The "crop" pipeline: an image file as a photo model's input, grayscale or RGB.

This is the one conversion of models trained on image folders: training
(:mod:`cnn.datasets.folder`) decodes every file with it, and prediction (the
CLI, the service) decodes uploads with it, so a file gives the model the same
pixels in both. Steps, after the header checks of :func:`decode_image`:

1. Decode the first frame (JPEG at a reduced scale when that is still at
   least the target's longer side, ``Image.draft``), and apply the EXIF
   orientation (unreadable EXIF is ignored).
2. 16- and 32-bit samples are scaled to 8 bits (not clipped); then the image
   becomes "L" (ITU-R 601 luma) or "RGB", alpha dropped as torchvision's
   ``ImageFolder`` loader does (``convert("RGB")``); a palette's transparency
   goes through "RGBA" first (Pillow warns otherwise).
3. When the size differs from the target: resize the short side to fit and
   centre-crop the rest (``PIL.ImageOps.fit``, bilinear), so the aspect ratio
   is kept and nothing is padded.
4. Invert only when asked: ``True``, or ``"auto"`` and the mean of the
   1-pixel border (every channel) is over 127, i.e. a light background,
   for grayscale models trained on light objects on black.

Plain 8-bit grey PNGs already of the target size skip Pillow (the fast path
of :mod:`cnn.images.png`, same pixels); for RGB their grey is repeated, which
is what Pillow's "L" to "RGB" conversion does.
"""
import io

import numpy as np

from cnn.images._pillow import _decode_errors, _pil, _StrictTruncation, _why
from cnn.images.convert import (
    _WIDE_MODES,
    _border_sums,
    _exif_transpose_method,
    _wide_to_uint8,
)
from cnn.images.png import _simple_png


def load_cropped(source, opts, open_checked):
    """The finished uint8 (H, W) or (H, W, 3) array of an opened ``source``
    (a decode._Source) for ``opts`` (options.Options); ``open_checked`` opens
    fast-path bytes with Pillow."""
    size, invert, channels = opts.size, opts.invert, opts.channels
    if source.png is not None:
        pixels = _simple_png(source.png, opts.max_pixels)
        if pixels is not None and pixels.shape == tuple(size):
            out = pixels.copy() if channels == 1 else np.repeat(pixels[:, :, None], 3, axis=2)
            return _invert(out, invert)   # (a copy: the fast path's array is read-only)
        source.fp = io.BytesIO(source.png)
        source.im = open_checked(source.fp, source.fail, opts.max_pixels, opts.allowed,
                                 opts.open_formats)
    with source.fp, source.im:
        return _invert(_pillow_cropped(source.im, source.fail, size, channels), invert)


def _pillow_cropped(im, fail, size, channels):
    Image, _, _, ImageOps = _pil()
    errors = _decode_errors()
    H, W = size
    mode = "L" if channels == 1 else "RGB"
    try:
        if im.format in ("JPEG", "MPO"):
            im.draft(mode, (max(H, W), max(H, W)))
        with _StrictTruncation():
            im.load()
    except errors as e:
        raise fail(f"corrupt or truncated image ({_why(e)})") from None
    try:
        transpose = _exif_transpose_method(im)
        if transpose is not None:
            im = im.transpose(transpose)
        if im.mode in _WIDE_MODES:
            im = Image.fromarray(_wide_to_uint8(np.asarray(im), im.mode))
        elif im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        im = im.convert(mode)
        if im.size != (W, H):
            im = ImageOps.fit(im, (W, H), method=Image.Resampling.BILINEAR)
        return np.array(im, dtype=np.uint8, order="C")
    except errors as e:
        raise fail(f"cannot convert image (mode {im.mode}) to {mode} ({_why(e)})") from None


def _invert(out, invert):
    if invert == "auto":
        invert = light_border(out)
    if invert:
        np.subtract(255, out, out=out)
    return out


def light_border(a):
    """Is the mean of the 1-pixel border of a (H, W) or (H, W, C) uint8 image > 127?"""
    sums, count = _border_sums(a[None])
    return bool(sums[0] > 127 * count)
