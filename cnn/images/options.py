"""Argument checks of decode_image/decode_images (caller mistakes: TypeError or
ValueError, not ImageError), cached per distinct set of options."""
import numbers
from typing import NamedTuple

from cnn._checks import pair
from cnn.images._pillow import _pil

# Checked options by their (exactly typed, hashable) arguments: a batch of
# decode_image calls with the same options checks them once.
_OPTIONS_CACHE = {}


FITS = ("pad", "crop")


class Options(NamedTuple):
    size: tuple            # (height, width)
    invert: object         # "auto", True or False
    max_pixels: int
    allowed: frozenset     # allowed format names
    open_formats: tuple    # what Image.open may try, in Pillow's order
    channels: int          # 1 or 3
    fit: str               # "pad" or "crop"


def _options_key(size, invert, max_pixels, allowed_formats, channels=1, fit="pad"):
    """A cache key for arguments whose check cannot depend on anything but
    their values, else None (lists, numpy ints, bools posing as ints, ...)."""
    if type(size) is tuple:
        if len(size) != 2 or type(size[0]) is not int or type(size[1]) is not int:
            return None
    elif type(size) is not int:
        return None
    if not (invert is True or invert is False or (type(invert) is str and invert == "auto")):
        return None
    if type(max_pixels) is not int or type(allowed_formats) is not frozenset:
        return None
    if type(channels) is not int or type(fit) is not str:
        return None
    # (a plugin registered later changes the formats Image.open may try)
    return size, invert, max_pixels, allowed_formats, channels, fit, len(_pil()[0].ID)


def _check_options(size, invert, max_pixels, allowed_formats, channels=1, fit="pad"):
    """The checked :class:`Options`."""
    key = _options_key(size, invert, max_pixels, allowed_formats, channels, fit)
    if key is not None:
        opts = _OPTIONS_CACHE.get(key)
        if opts is None:
            opts = _check_options_uncached(size, invert, max_pixels, allowed_formats,
                                           channels, fit)
            if len(_OPTIONS_CACHE) < 64:
                _OPTIONS_CACHE[key] = opts
        return opts
    return _check_options_uncached(size, invert, max_pixels, allowed_formats, channels, fit)


def _check_options_uncached(size, invert, max_pixels, allowed_formats, channels=1, fit="pad"):
    size = pair(size, "size", 1)
    if not (invert is True or invert is False or (isinstance(invert, str) and invert == "auto")):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if not isinstance(fit, str) or fit not in FITS:
        raise ValueError(f"fit must be 'pad' (fit inside, pad) or 'crop' (fill, centre-crop), "
                         f"got {fit!r}")
    if channels == 3 and fit == "pad":
        raise ValueError("fit='pad' is the grayscale Fashion-MNIST pipeline; colour "
                         "(channels=3) images use fit='crop'")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) \
            or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if isinstance(allowed_formats, (str, bytes)):
        raise TypeError(f"allowed_formats must be a collection of Pillow format names, "
                        f"got the string {allowed_formats!r}")
    try:
        names = list(allowed_formats)
    except TypeError:
        raise TypeError(f"allowed_formats must be a collection of Pillow format names, "
                        f"got {type(allowed_formats).__name__}") from None
    Image = _pil()[0]
    Image.init()
    allowed = set()
    for f in names:
        if not isinstance(f, str):
            raise TypeError(f"allowed_formats must hold format names (str), got {f!r}")
        f = f.upper()
        if f not in Image.OPEN and f != "MPO":
            raise ValueError(f"allowed_formats: {f!r} is not a format Pillow can open "
                             f"(known: {', '.join(sorted(Image.OPEN))})")
        allowed.add(f)
    if not allowed:
        raise ValueError("allowed_formats must name at least one format")
    # Formats tried by Image.open, in Pillow's own order; MPO files open through JPEG.
    wanted = allowed | ({"JPEG"} if "MPO" in allowed else set())
    open_formats = tuple(f for f in Image.ID if f in wanted)
    return Options(size, invert, int(max_pixels), frozenset(allowed), open_formats,
                   int(channels), fit)
