"""Image files and raw pixel arrays as model input, one way for every caller.

The prediction CLI (``python -m cnn.predict``) and the HTTP service both turn
what a user sends into the arrays the network was trained on: 28x28 uint8
grayscale, a LIGHT object on a BLACK background, like Fashion-MNIST.

* :func:`decode_image` / :func:`decode_images` take encoded image files (bytes
  or paths) in any common format and mode and return uint8 arrays (H, W) /
  (N, H, W).
* :func:`pixels_from_array` takes raw pixels (nested lists from JSON, or an
  ndarray) and returns the float32 (N, 1, H, W) batch in [0, 1] that the
  network reads; ``decode_images(...)[:, None] / 255`` is the same thing for
  files.

Untrusted input is expected: bad files raise :class:`ImageError` (a
ValueError) whose message names the image and the problem; the pixel count is
checked from the header before anything is decoded; only an allow-list of
formats is ever parsed.

``size`` is always (height, width), the shape of the returned arrays.
"""
import io
import numbers
import os
import struct
import threading
import zlib

import numpy as np

from cnn._checks import pair

__all__ = ["ALLOWED_FORMATS", "MAX_PIXELS", "MAX_TOTAL_PIXELS", "ImageError", "PixelBudgetError",
           "decode_image", "decode_images", "pixels_from_array"]

#: Pillow format names that may be parsed at all. JPEG files that Pillow reports
#: as "MPO" (multi-picture JPEGs written by many cameras) count as JPEG.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM"})

#: Largest width * height of one image accepted by default, checked from the
#: header before any pixel is decoded. PNG, WebP, GIF, TIFF and BMP can only be
#: decoded at full size before they are reduced (libjpeg scales JPEG down while
#: decoding, but a progressive JPEG still buffers ~6 bytes of coefficients per
#: pixel), so this bounds the cost of one image. Measured per megapixel
#: (benchmarks/image_cost.py, Pillow 13, full decode): WebP 15.3 MiB and 13 ms
#: of CPU (libwebp decodes through two RGBA canvases), RGBA and 16-bit RGBA PNG
#: 3.8 MiB and 14 ms, progressive 4:4:4 JPEG 5.8 MiB and 13 ms, 16-bit grey PNG
#: 1.9 MiB and 7 ms, 8-bit grey or palette PNG and GIF 1 MiB and 3 ms.
#: 4096 x 3072 (12.6 M pixels: any 12-megapixel camera photo) keeps the worst of
#: them near 190 MiB and 0.3 s, within the service's target of 256 MiB and 1 s.
MAX_PIXELS = 4096 * 3072

#: Default budget of the service (CNN_MAX_REQUEST_PIXELS) for the summed
#: width * height of every image file in one request (``max_total_pixels`` of
#: decode_images, checked from the headers before anything is decoded). The
#: images are decoded one after another, so memory is bounded by MAX_PIXELS
#: and CPU by this: many mid-sized 16-bit RGBA PNGs, the slowest case measured,
#: take ~20 ms of CPU per megapixel (decode, reduction and conversion), so
#: 32 M pixels (2.5 images at MAX_PIXELS, or 256 of 353x353) take ~0.65 s.
MAX_TOTAL_PIXELS = 32_000_000

_INVERT_CHOICES = ("auto", True, False)


class ImageError(ValueError):
    """An image could not be used: its message says which image and why.

    ``index`` (position in a batch, 0-based) and ``name`` (file name or path)
    are None when unknown; ``reason`` is the message without the prefix.
    """

    def __init__(self, reason, *, index=None, name=None):
        self.reason = reason
        self.index = index
        self.name = name
        super().__init__(f"{_label(index, name)}: {reason}")

    def __reduce__(self):  # keep the parts (and one prefix) across pickling
        return (_rebuild_image_error, (type(self), self.reason, self.index, self.name))


def _rebuild_image_error(cls, reason, index, name):
    return cls(reason, index=index, name=name)


class PixelBudgetError(ValueError):
    """A batch whose images have more pixels in all than ``max_total_pixels``
    (decode_images), found from their headers before anything was decoded.

    ``total`` is the summed width * height of the readable images, ``limit``
    the budget and ``count`` the number of images counted.
    """

    def __init__(self, total, limit, count):
        self.total, self.limit, self.count = total, limit, count
        super().__init__(f"the {count} images have {total:,} pixels in all (width x height "
                         f"from their headers), over the limit of {limit:,} pixels for one "
                         f"batch (max_total_pixels): send fewer or smaller images")

    def __reduce__(self):
        return (type(self), (self.total, self.limit, self.count))


def _label(index, name):
    label = "image" if index is None else f"image {index}"
    if name is not None:
        label += f" ({name!r})" if index is not None else f" {name!r}"
    return label


# --------------------------------------------------------------------------
# Pillow, imported on first use: pixels_from_array works without it.

_PIL = None
_DECODE_ERRORS = None


def _pil():
    global _PIL
    if _PIL is None:
        try:
            from PIL import Image, ImageChops, ImageFile, ImageOps
        except ImportError as e:  # pragma: no cover - Pillow is installed in the project
            raise ImportError("decoding image files needs Pillow (pip install "
                              "'Pillow>=10')") from e
        _PIL = (Image, ImageChops, ImageFile, ImageOps)
    return _PIL


def _decode_errors():
    """Exceptions Pillow raises for bad data (corrupt, truncated, hostile)."""
    global _DECODE_ERRORS
    if _DECODE_ERRORS is None:
        Image = _pil()[0]
        _DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                          IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError,
                          Image.DecompressionBombError, Image.DecompressionBombWarning)
    return _DECODE_ERRORS


# ImageFile.LOAD_TRUNCATED_IMAGES is a process-wide switch: when some other code
# sets it, Pillow silently fills the missing part of a truncated file with grey.
# While any decode of ours is loading pixels the switch is held at False (the
# Pillow default), and the caller's value is put back afterwards. When it is
# already False, as it normally is, nothing is written.
_strict_lock = threading.Lock()
_strict_users = 0
_strict_saved = False


class _StrictTruncation:
    def __enter__(self):
        global _strict_users, _strict_saved
        ImageFile = _pil()[2]
        with _strict_lock:
            if _strict_users == 0:
                _strict_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            _strict_users += 1
            if ImageFile.LOAD_TRUNCATED_IMAGES:  # (also when set meanwhile by other code)
                _strict_saved = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __exit__(self, *exc):
        global _strict_users
        ImageFile = _pil()[2]
        with _strict_lock:
            _strict_users -= 1
            if _strict_users == 0 and _strict_saved and not ImageFile.LOAD_TRUNCATED_IMAGES:
                ImageFile.LOAD_TRUNCATED_IMAGES = _strict_saved
        return False


# --------------------------------------------------------------------------
# Argument checks (caller mistakes: TypeError/ValueError, not ImageError).

# Checked options by their (exactly typed, hashable) arguments: a batch of
# decode_image calls with the same options checks them once.
_OPTIONS_CACHE = {}


def _options_key(size, invert, max_pixels, allowed_formats):
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
    # (a plugin registered later changes the formats Image.open may try)
    return size, invert, max_pixels, allowed_formats, len(_pil()[0].ID)


def _check_options(size, invert, max_pixels, allowed_formats):
    key = _options_key(size, invert, max_pixels, allowed_formats)
    if key is not None:
        opts = _OPTIONS_CACHE.get(key)
        if opts is None:
            opts = _check_options_uncached(size, invert, max_pixels, allowed_formats)
            if len(_OPTIONS_CACHE) < 64:
                _OPTIONS_CACHE[key] = opts
        return opts
    return _check_options_uncached(size, invert, max_pixels, allowed_formats)


def _check_options_uncached(size, invert, max_pixels, allowed_formats):
    size = pair(size, "size", 1)
    if not (invert is True or invert is False or (isinstance(invert, str) and invert == "auto")):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
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
    return size, invert, int(max_pixels), frozenset(allowed), open_formats


# --------------------------------------------------------------------------
# Decoding.

def decode_image(data, *, size=(28, 28), invert="auto", max_pixels=MAX_PIXELS,
                 allowed_formats=ALLOWED_FORMATS, name=None):
    """Decode one image file into a uint8 (H, W) array, Fashion-MNIST style.

    ``data`` is the file's bytes (bytes, bytearray, memoryview) or a path (str
    or os.PathLike); ``name`` labels the image in error messages (default: the
    path, when ``data`` is one). ``size`` is (height, width).

    Steps:

    1. Open with Pillow, trying only ``allowed_formats``; anything else is an
       :class:`ImageError`, as are unreadable, corrupt and truncated files.
    2. Reject images whose header says width * height > ``max_pixels``
       (default :data:`MAX_PIXELS`, 4096 x 3072), before any pixel is decoded
       (decompression bombs, and the memory of one decode). Pillow's own process-wide
       ``Image.MAX_IMAGE_PIXELS`` check still runs too (it refuses more than
       twice that, about 179M pixels by default, and warns above it).
    3. Decode the first frame only (animated GIF/WEBP, multi-page TIFF; JPEG
       scaled down by up to 8 while decoding) and apply the EXIF orientation
       tag (unreadable EXIF is ignored). An image more than 6 times the target
       size is then box-reduced (``Image.reduce``, in its own mode) to between
       3 and 6 times it: the reduction that step 6's resize would begin with.
    4. Convert any mode to grayscale (ITU-R 601 luma; 16-bit and 32-bit
       samples are scaled down, not clipped) plus an alpha channel, from RGBA,
       LA, PA or a palette / grey / RGB "transparency" colour. Converting
       after reducing gives the full-size result to within one grey level.
    5. Invert so the object comes out light on black, as the model expects:

       * ``invert=True`` always inverts, ``invert=False`` never does;
       * ``invert="auto"`` inverts when the background is light. The
         background is read from the 1-pixel border: it inverts when the mean
         grey of the border is > 127 (e.g. a photo of a product on white),
         and leaves light-on-dark images (Fashion-MNIST itself) alone.
         Transparent pixels are background, whatever their colour: the border
         mean is weighted by alpha, and when the border is mostly (more than
         half) transparent the opaque pixels are the object instead, so
         "auto" inverts when their mean grey is <= 127 (dark object), leaving
         a light object light.

       Transparent areas then become black (the background of the output) in
       every mode: the result is composited onto black after inverting.
    6. Fit into ``size`` keeping the aspect ratio: the longer side is resized
       to the target (Lanczos, which averages like a box filter when
       shrinking), and the image is centred and padded with the background
       colour (the median of the output's border, 0 for a black background).

    Returns a new C-contiguous uint8 array of shape ``size``.
    """
    opts = _check_options(size, invert, max_pixels, allowed_formats)
    return _decode_one(data, None, name, opts)


def decode_images(items, *, names=None, on_error=None, max_total_pixels=None, **kw):
    """Decode a batch of image files (bytes or paths) into uint8 (N, H, W).

    Takes the keyword arguments of :func:`decode_image` (except ``name``);
    ``names`` optionally labels the items for error messages (default: the
    path of path items). Stops at the first bad image, raising
    :class:`ImageError` that gives its 0-based index (and name).

    With ``on_error``, every image is tried instead: ``on_error(index, exc)``
    is called for each one that fails (``exc`` is the :class:`ImageError`, or
    whatever else decoding that item raised, e.g. TypeError for an item that is
    neither bytes nor a path) and its slot of the result is left black (zeros).

    ``max_total_pixels`` (None: no budget) bounds the work of the whole batch:
    every header is read first, and when the readable images have more than
    that many pixels in all (width * height, summed) :class:`PixelBudgetError`
    is raised before any image is decoded, whatever ``on_error``.

    The result is the same as decoding each item with :func:`decode_image`;
    the options are checked once and the last step for images that are
    already ``size`` and opaque (inverting) runs on the whole batch at once.
    """
    if "name" in kw:
        raise TypeError("decode_images takes names=[...] (one per item), not name=")
    if isinstance(items, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(f"items must be a sequence of images (bytes or paths), got a single "
                        f"{type(items).__name__}; wrap it in a list")
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"items must be a sequence of images (bytes or paths), got "
                        f"{type(items).__name__}") from None
    if not items:
        raise ValueError("items must contain at least one image, got an empty sequence")
    if names is None:
        names = [None] * len(items)
    else:
        if isinstance(names, (str, bytes)):
            raise TypeError("names must be a sequence of names, one per item, not a string")
        names = list(names)
        if len(names) != len(items):
            raise ValueError(f"names must have one entry per item: {len(items)} items but "
                             f"{len(names)} names")
    unknown = set(kw) - {"size", "invert", "max_pixels", "allowed_formats"}
    if unknown:
        raise TypeError(f"decode_images got unexpected keyword arguments {sorted(unknown)}")
    opts = _check_options(kw.get("size", (28, 28)), kw.get("invert", "auto"),
                          kw.get("max_pixels", MAX_PIXELS),
                          kw.get("allowed_formats", ALLOWED_FORMATS))
    if max_total_pixels is not None and (
            isinstance(max_total_pixels, bool) or not isinstance(max_total_pixels, numbers.Integral)
            or max_total_pixels < 1):
        raise ValueError(f"max_total_pixels must be a positive int or None, got "
                         f"{max_total_pixels!r}")
    if on_error is not None and not callable(on_error):
        raise TypeError(f"on_error must be callable or None, got {type(on_error).__name__}")
    h, w = opts[0]
    out = (np.empty if on_error is None else np.zeros)((len(items), h, w), dtype=np.uint8)
    if max_total_pixels is None:
        opened = None
    else:
        opened = _open_within_budget(items, names, opts, on_error, int(max_total_pixels))
    _decode_into(out, items, names, opts, on_error, opened)
    return out


def _open_within_budget(items, names, opts, on_error, budget):
    """Read every header (nothing decoded): the opened images, None where one
    failed (reported), or PixelBudgetError when their pixels exceed ``budget``.

    Files given by path are closed again (a batch of paths must not hold one
    descriptor each) and reopened when decoded."""
    opened, total, count = [], 0, 0
    try:
        for i, (data, name) in enumerate(zip(items, names)):
            try:
                source = _open_one(data, i, name, opts)
            except Exception as exc:  # noqa: BLE001 - reported to on_error, else raised
                if on_error is None:
                    raise
                on_error(i, exc)
                opened.append(None)
                continue
            total += source.pixels
            count += 1
            if source.path is not None:
                source.close()
            opened.append(source)
    except BaseException:
        for source in opened:
            if source is not None:
                source.close()
        raise
    if total > budget:
        for source in opened:
            if source is not None:
                source.close()
        raise PixelBudgetError(total, budget, count)
    return opened


def _decode_into(out, items, names, opts, on_error, opened=None):
    size, invert = opts[0], opts[1]
    pending = []  # images stored as decoded in out[i]: only the inversion is left
    for i, (data, name) in enumerate(zip(items, names)):
        if opened is not None and opened[i] is None:
            continue  # (its header could not be read: already reported)
        try:
            if opened is None or opened[i].path is not None:
                source = _open_one(data, i, name, opts)
            else:
                source = opened[i]
                opened[i] = None  # (freed once decoded)
            pixels, alpha, fit = _load(source, opts)
            if alpha is None and pixels.shape == size:
                out[i] = pixels
                pending.append(i)
            else:
                out[i] = _finish_checked(pixels, alpha, size, invert, source.fail, fit)
        except Exception as exc:  # noqa: BLE001 - reported to on_error, else raised
            if on_error is None:
                raise
            on_error(i, exc)
    if not pending or invert is False:
        return
    whole = len(pending) == len(out)
    batch = out if whole else out[pending]
    if invert == "auto":
        flip = _light_background(batch)  # the "auto" rule of _should_invert, per image
        if whole and flip.all():
            np.subtract(255, out, out=out)
        elif flip.any():
            rows = np.asarray(pending)[flip]
            out[rows] = 255 - out[rows]
    elif whole:
        np.subtract(255, out, out=out)
    else:
        out[pending] = 255 - batch


def _light_background(batch):
    """For each opaque (N, h, w) uint8 image: is the mean of its 1-pixel border
    > 127 (what _should_invert decides for one image without alpha)?"""
    n, h, w = batch.shape
    if w <= 2 or h <= 2:
        sums, count = batch.reshape(n, -1).sum(axis=1, dtype=np.int64), h * w
    else:
        sums = (batch[:, 0].sum(axis=1, dtype=np.int64)
                + batch[:, -1].sum(axis=1, dtype=np.int64)
                + batch[:, 1:-1, 0].sum(axis=1, dtype=np.int64)
                + batch[:, 1:-1, -1].sum(axis=1, dtype=np.int64))
        count = 2 * w + 2 * (h - 2)
    return sums > 127 * count


def _decode_one(data, index, name, opts):
    """One image file -> its finished uint8 array of shape ``size``."""
    source = _open_one(data, index, name, opts)
    pixels, alpha, fit = _load(source, opts)
    return _finish_checked(pixels, alpha, opts[0], opts[1], source.fail, fit)


def _finish_checked(pixels, alpha, size, invert, fail, fit=None):
    Image, ImageChops, _, ImageOps = _pil()
    try:
        return _finish(pixels, alpha, size, invert, Image, ImageChops, ImageOps, fit)
    except _decode_errors() as e:  # pragma: no cover - in-memory operations on good images
        raise fail(f"cannot process image ({_why(e)})") from None


class _Source:
    """One image file whose header was read and checked; nothing decoded yet.

    ``pixels`` is its width * height; ``png`` the bytes of a plain grey PNG
    for the fast path (_simple_png), else ``im`` the opened Pillow image
    reading ``fp``; ``path`` is set for files given by path."""

    __slots__ = ("pixels", "png", "im", "fp", "path", "fail")

    def __init__(self, pixels, fail, png=None, im=None, fp=None, path=None):
        self.pixels, self.fail, self.png, self.im, self.fp, self.path = (
            pixels, fail, png, im, fp, path)

    def close(self):
        if self.im is not None:
            self.im.close()
        if self.fp is not None:
            self.fp.close()
        self.im = self.fp = None


def _open_one(data, index, name, opts):
    """Open one image file and check its header (format, pixel count): a _Source."""
    size, invert, max_pixels, allowed, open_formats = opts

    def fail(reason):
        return ImageError(reason, index=index, name=name)

    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not isinstance(path, str):
            raise TypeError(f"{_label(index, name)}: a path must be str or os.PathLike[str], "
                            f"got {path!r}")
        if name is None:
            name = path
        try:
            fp = open(path, "rb")
        except OSError as e:
            raise fail(f"cannot read file ({e.strerror or e})") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        path = None
        if "PNG" in allowed:
            wh = _simple_png_size(data, max_pixels)
            if wh is not None and _reduce_factors(*wh, _fit(*wh, size)) == (1, 1):
                return _Source(wh[0] * wh[1], fail, png=data)  # (else: reduced by Pillow)
        fp = io.BytesIO(data)
    else:
        raise TypeError(f"{_label(index, name)}: data must be bytes or a file path, got "
                        f"{type(data).__name__}")
    try:
        im = _open_checked(fp, fail, max_pixels, allowed, open_formats)
    except BaseException:
        fp.close()
        raise
    return _Source(im.width * im.height, fail, im=im, fp=fp, path=path)


def _open_checked(fp, fail, max_pixels, allowed, open_formats):
    """The Pillow image of ``fp``, its format allowed and its header's pixel
    count within ``max_pixels``; nothing decoded."""
    Image = _pil()[0]
    errors = _decode_errors()
    prefix = fp.read(16)
    if not prefix:
        raise fail("empty file (0 bytes)")
    fp.seek(0)
    try:
        im = Image.open(fp, formats=open_formats)
    except Image.UnidentifiedImageError:
        raise fail(_unidentified_reason(prefix, allowed)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise fail(f"too many pixels for Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS): "
                   f"{e}") from None
    except errors as e:
        raise fail(f"not a readable image ({_why(e)})") from None
    fmt = im.format
    width, height = im.size
    reason = None
    if not (fmt in allowed or (fmt == "MPO" and "JPEG" in allowed)):
        reason = f"format {fmt} is not allowed (allowed: {', '.join(sorted(allowed))})"
    elif width < 1 or height < 1:
        reason = f"has no pixels ({width}x{height})"
    elif width * height > max_pixels:
        reason = (f"{width}x{height} = {width * height:,} pixels is over the limit of "
                  f"{max_pixels:,} pixels (max_pixels)")
    if reason is not None:
        im.close()
        raise fail(reason)
    return im


def _load(source, opts):
    """Decode an opened image: (uint8 (h, w) grey pixels, "L" alpha image or
    None, fit) where ``fit`` is None or the ((width, height), box) that
    _finish resizes to. Nothing is inverted yet; large images come out reduced."""
    size, invert, max_pixels, allowed, open_formats = opts
    fail = source.fail
    if source.png is not None:
        pixels = _simple_png(source.png, max_pixels)
        if pixels is not None:
            return pixels, None, None
        # (damaged, or more than the fast path reads: Pillow decides)
        source.fp = io.BytesIO(source.png)
        source.im = _open_checked(source.fp, fail, max_pixels, allowed, open_formats)
    with source.fp, source.im:
        return _load_pil(source.im, fail, size)


def _load_pil(im, fail, size):
    errors = _decode_errors()
    fmt = im.format
    try:
        if fmt in ("JPEG", "MPO"):
            # Let libjpeg scale down by up to 8 while decoding (both sides
            # stay >= the target's longer side, so the fit below still shrinks).
            side = max(size)
            im.draft("L" if im.mode == "RGB" else im.mode, (side, side))
        with _StrictTruncation():
            im.load()
    except errors as e:
        raise fail(f"corrupt or truncated image ({_why(e)})") from None
    # Upright first (a copy at full size, but only for rotated files, mostly
    # JPEG photos already scaled down), so that the reduction below is the one
    # Image.resize would do in _finish.
    transpose = _exif_transpose_method(im)
    source = im
    try:
        if transpose is not None:
            im = im.transpose(transpose)
    except errors as e:  # pragma: no cover - in-memory operations on good images
        raise fail(f"cannot process image ({_why(e)})") from None
    fit = _fit(im.width, im.height, size)
    factors = _reduce_factors(im.width, im.height, fit)
    try:
        gray, alpha = _gray_alpha(im, factors)
    except errors as e:
        raise fail(f"cannot convert mode {source.mode} to grayscale ({_why(e)})") from None
    try:
        # The pixels as an array now: ``gray`` may be ``im`` itself (an "L"
        # image), which closing the file makes unusable. (frombuffer of
        # tobytes: np.asarray(image) does the same with more overhead.)
        pixels = np.frombuffer(gray.tobytes(), dtype=np.uint8).reshape(
            gray.size[1], gray.size[0])
    except errors as e:  # pragma: no cover - in-memory operations on good images
        raise fail(f"cannot process image ({_why(e)})") from None
    if factors == (1, 1):
        return pixels, alpha, None
    # What Image.resize(fit, reducing_gap=...) resizes after its own reduction.
    box = (0, 0, im.width / factors[0], im.height / factors[1])
    return pixels, alpha, (fit, box)


# Large images are reduced (Image.reduce: box averages, cheap) before any mode
# conversion, by the factor Image.resize(..., reducing_gap=_REDUCING_GAP) would
# use first anyway; the Lanczos resize in _finish does the rest.
_REDUCING_GAP = 3.0


def _fit(w, h, size):
    """(width, height) of a w x h image fitted into ``size`` (height, width),
    aspect ratio kept."""
    th, tw = size
    scale = min(tw / w, th / h)
    return min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))


def _reduce_factors(w, h, fit):
    """The (x, y) factors by which Image.resize((w, h) -> fit) reduces first."""
    return (max(1, int(w / fit[0] / _REDUCING_GAP)),
            max(1, int(h / fit[1] / _REDUCING_GAP)))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _simple_png(data, max_pixels):
    """The uint8 (h, w) pixels of the simplest kind of PNG file, else None.

    Pillow's PNG plugin costs ~40 us of Python per file (chunk objects, the
    tile machinery, EXIF lookups); for a 28x28 image that is most of the
    decoding. This fast path reads the container itself and hands the IDAT
    data to the same C decoder that Pillow's plugin uses ("zip", raw mode L),
    so the pixels are the same. It only takes files where that is the whole
    story: the PNG signature, then exactly IHDR (8-bit grayscale, compression
    0, filter 0, not interlaced, width x height within ``max_pixels`` and
    Pillow's MAX_IMAGE_PIXELS), one or more consecutive IDAT chunks and IEND
    at the very end, every chunk's CRC correct, and data that decodes
    completely and cleanly. Anything else (other chunks, which may carry
    transparency, EXIF orientation or text; other modes; a damaged file)
    returns None, and the caller decodes the file with Pillow as always, so
    errors, limits and results are exactly those of the general path.
    """
    wh = _simple_png_size(data, max_pixels)
    if wh is None:
        return None
    width, height = wh
    n = len(data)
    unpack = struct.unpack_from
    Image = _pil()[0]
    view = memoryview(data)
    pos, idat = 8, []
    while True:
        if pos + 12 > n:
            return None
        length, cid = unpack(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > n or zlib.crc32(view[pos + 4:end]) != unpack(">I", data, end)[0]:
            return None
        if cid == b"IDAT":
            idat.append(view[pos + 8:end])
        elif cid == b"IEND":
            if not idat or length or end + 4 != n:
                return None
            break
        elif cid != b"IHDR" or pos != 8:
            return None  # (any other chunk; IHDR only first)
        pos = end + 4
    try:
        im = Image.frombytes("L", (width, height), b"".join(idat), "zip", "L")
    except Exception:  # noqa: BLE001 - damaged data: Pillow's own path reports it
        return None
    return np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(height, width)


def _simple_png_size(data, max_pixels):
    """(width, height) from the IHDR of what may be a plain PNG for
    _simple_png (8-bit grey, within the pixel limits), else None."""
    if len(data) < 57 or not data.startswith(_PNG_SIGNATURE):  # (signature + IHDR + IDAT + IEND)
        return None
    length, cid, width, height, depth, color, compression, filtering, interlace = (
        struct.unpack_from(">I4sIIBBBBB", data, 8))
    if (cid != b"IHDR" or length != 13 or (depth, color, compression, filtering, interlace)
            != (8, 0, 0, 0, 0) or width < 1 or height < 1 or width * height > max_pixels):
        return None
    limit = _pil()[0].MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        return None  # (Pillow's warning or error decides)
    return width, height


def _why(e):
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _unidentified_reason(prefix, allowed):
    """Name the format when a non-allowed plugin's magic bytes match (no parsing)."""
    Image = _pil()[0]
    Image.init()
    allowed_text = ", ".join(sorted(allowed))
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        if accept is None:  # formats without magic bytes can't be recognised safely
            continue
        try:
            hit = accept(prefix)
        except Exception:  # noqa: BLE001 - a plugin's sniffing must not hide the real error
            continue
        if hit and not isinstance(hit, str):
            if fmt in allowed or (fmt == "JPEG" and "MPO" in allowed):
                return f"not a readable {fmt} image (damaged header)"
            return f"not an allowed image format (looks like {fmt}; allowed: {allowed_text})"
    return (f"not a recognised image (cannot identify image file; allowed formats: "
            f"{allowed_text})")


def _exif_transpose_method(im):
    """The transpose that undoes ``im``'s EXIF orientation (as ImageOps.exif_transpose).

    None when there is no orientation tag, or the metadata cannot be read (the
    pixels are then used as stored rather than rejecting the image).
    """
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable metadata is not a reason to fail
        return None
    T = _pil()[0].Transpose
    return {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
            6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _gray_alpha(im, factors=(1, 1)):
    """``im`` reduced by ``factors`` (box averages, Image.reduce) as an "L"
    image and an "L" alpha image (None when fully opaque).

    Modes are converted after reducing wherever Pillow can reduce them, so
    that the only work at full size is the decode itself: 16-bit grey is
    reduced as 32-bit "I" (never as float64 at full size); "1" and "P" first
    become "L". Transparent images become "L" grey and alpha (1 byte a pixel
    each) and are reduced premultiplied, so that each pixel counts in
    proportion to its opacity, as when the image is composited onto black
    before it is resized.
    """
    Image = _pil()[0]
    shrink = factors != (1, 1)
    mode = im.mode
    trns = im.info.get("transparency")
    if mode in _WIDE_MODES:
        if isinstance(trns, numbers.Number) and mode != "F":
            a = np.asarray(im)
            alpha = Image.fromarray(np.where(a == trns, np.uint8(0), np.uint8(255)))
            return _reduce_with_alpha(Image.fromarray(_wide_to_uint8(a, mode)), alpha, factors)
        if shrink:
            im = (im if mode in ("I", "F") else im.convert("I")).reduce(factors)
        return Image.fromarray(_wide_to_uint8(np.asarray(im), mode)), None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or trns is not None:
        if mode == "P" and isinstance(trns, (int, bytes)):
            # (the alpha of each palette entry, looked up: no RGBA copy)
            lut = np.full(256, 255, np.uint8)
            if isinstance(trns, bytes):
                lut[:len(trns[:256])] = np.frombuffer(trns[:256], np.uint8)
            elif 0 <= trns < 256:
                lut[trns] = 0
            alpha = Image.fromarray(lut[np.asarray(im)])
            return _reduce_with_alpha(im.convert("L"), alpha, factors)
        rgba = im if mode in ("RGBA", "LA") else im.convert("RGBA")
        return _reduce_with_alpha(rgba.convert("L"), rgba.getchannel("A"), factors)
    if mode in ("L", "RGB", "RGBX", "CMYK", "YCbCr"):
        im = im.reduce(factors) if shrink else im
        return (im if mode == "L" else im.convert("L")), None  # ("L": no copy)
    gray = im.convert("L") if mode in ("1", "P", "HSV") else im.convert("RGB").convert("L")
    return (gray.reduce(factors) if shrink else gray), None  # (other modes, if Pillow can)


def _reduce_with_alpha(gray, alpha, factors):
    """"L" grey and alpha images reduced by ``factors``: (grey, alpha), alpha
    None when fully opaque. The grey is averaged premultiplied by alpha, then
    divided by the averaged alpha again (_finish multiplies it back)."""
    if alpha.getextrema()[0] == 255:
        return (gray.reduce(factors) if factors != (1, 1) else gray), None
    if factors == (1, 1):
        return gray, alpha
    Image, ImageChops = _pil()[:2]
    premultiplied = np.asarray(ImageChops.multiply(gray, alpha).reduce(factors), np.uint32)
    alpha = alpha.reduce(factors)
    a = np.asarray(alpha, np.uint32)
    g = np.minimum((premultiplied * 255 + a // 2) // np.maximum(a, 1), 255).astype(np.uint8)
    return Image.fromarray(g), alpha


def _wide_to_uint8(a, mode):
    """16-bit, 32-bit int or float samples as uint8 0-255.

    I;16 is scaled from 0-65535. I and F: values within 0-1 (F only) are
    taken as 0-1, within 0-255 as 8-bit, within 0-65535 as 16-bit, and
    anything wider is scaled from its own minimum-maximum range.
    """
    if mode.startswith("I;16"):
        # round(a * 255 / 65535) in integers (exactly the float result: no
        # value of a is a tie), 4 bytes a pixel rather than float64's 8
        b = a.astype(np.uint32)
        b *= 255
        b += 32767
        b //= 65535
        return b.astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1 and mode == "F":
        scale, lo = 1.0, 0.0
    elif lo >= 0 and hi <= 255:
        scale, lo = 255.0, 0.0
    elif lo >= 0 and hi <= 65535:
        scale, lo = 65535.0, 0.0
    else:
        scale = max(hi - lo, 1e-12)
    return np.clip(np.rint((a - lo) * (255.0 / scale)), 0, 255).astype(np.uint8)


def _border(a):
    """The 1-pixel border of a 2-D uint8 array as a flat array: top row, bottom
    row, then the left and right columns without the corners."""
    h, w = a.shape
    if w <= 2 or h <= 2:
        return a.ravel()
    return np.concatenate((a[0], a[-1], a[1:-1, 0], a[1:-1, -1]))


def _median_int(values):
    """int(np.median(values)) for a non-empty uint8 array, without np.median's
    overhead (the mean of the two middle values, rounded down, for even sizes)."""
    s = np.sort(values)
    n = len(s)
    if n % 2:
        return int(s[n // 2])
    return (int(s[n // 2 - 1]) + int(s[n // 2])) // 2


def _should_invert(gray, alpha):
    """The "auto" rule of decode_image; ``gray`` is a uint8 array, ``alpha``
    an "L" image or None."""
    g = _border(gray)
    if alpha is None:
        return int(g.sum(dtype=np.int64)) > 127 * g.size  # mean > 127, exactly
    g = g.astype(np.float64)
    a = _border(np.asarray(alpha)).astype(np.float64) / 255.0
    if a.mean() >= 0.5:  # mostly opaque border: it is the background
        return (g * a).sum() / a.sum() > 127
    # Transparent background: look at the object (alpha-weighted mean grey).
    Image, ImageChops = _pil()[:2]
    weights = np.arange(256, dtype=np.float64)
    alpha_sum = np.dot(alpha.histogram(), weights)
    if alpha_sum == 0:
        return False  # nothing opaque: all background
    premultiplied = ImageChops.multiply(Image.fromarray(gray), alpha)  # gray * alpha / 255
    mean = np.dot(premultiplied.histogram(), weights) * 255.0 / alpha_sum
    return mean <= 127


def _finish(gray, alpha, size, invert, Image, ImageChops, ImageOps, fit=None):
    """Invert, composite onto black and fit into ``size``: ``gray`` is the uint8
    (h, w) array of the image, ``alpha`` its "L" alpha image or None, ``fit``
    None or, for an image that _load_pil reduced, the ((width, height), box)
    to resize it to (what Image.resize does after its own reduction)."""
    if invert == "auto":
        invert = _should_invert(gray, alpha)
    if alpha is None:
        out = 255 - gray if invert else gray  # (as ImageOps.invert)
    else:
        img = Image.fromarray(gray)
        img = ImageOps.invert(img) if invert else img
        out = np.asarray(ImageChops.multiply(img, alpha))  # transparent -> black
    th, tw = size
    h, w = out.shape
    if (h, w) == (th, tw):
        return np.array(out, dtype=np.uint8, order="C")  # already the right size: a copy
    background = _median_int(_border(out))
    (nw, nh), box = fit if fit is not None else (_fit(w, h, size), None)
    if (nw, nh) != (w, h):
        out = np.asarray(Image.fromarray(out).resize((nw, nh), Image.Resampling.LANCZOS,
                                                     box=box, reducing_gap=_REDUCING_GAP))
    canvas = np.full((th, tw), background, dtype=np.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas[top:top + nh, left:left + nw] = out
    return canvas


# --------------------------------------------------------------------------
# Raw pixel arrays (JSON).

_NUMBER_TYPES = (int, float, np.integer, np.floating)


def pixels_from_array(a, *, size=(28, 28)):
    """Raw pixels (nested lists from JSON, or an ndarray) as float32 (N, 1, H, W) in [0, 1].

    Accepted shapes, with (H, W) == ``size`` exactly (arrays are never
    resized): one image (H, W) or (1, H, W); a batch (N, H, W) or
    (N, 1, H, W). Pixels are already model input: light object on black,
    not inverted here.

    Values are numbers in [0, 255]: if any value is > 1 the whole batch is
    read as 0-255 and divided by 255, otherwise it is taken as 0-1 already
    (so a batch whose values are all 0 or 1 means black and white).
    Non-integer values are fine on either scale.

    Raises ValueError naming ``pixels`` for NaN or infinity, booleans,
    strings or other non-numbers, ragged lists, a wrong shape, no images,
    and values outside [0, 255].
    """
    h, w = pair(size, "size", 1)
    arr = _numeric_array(a)
    if arr.size == 0:
        raise ValueError(f"pixels is empty (shape {arr.shape}); expected at least one "
                         f"{h}x{w} image")
    shape = arr.shape
    expected = f"({h}, {w}), (N, {h}, {w}) or (N, 1, {h}, {w})"
    if arr.ndim < 2 or arr.ndim > 4 or shape[-2:] != (h, w) \
            or (arr.ndim == 4 and shape[1] != 1):
        raise ValueError(f"pixels must have shape {expected}, got {shape}")
    arr = arr.reshape((-1, 1, h, w))
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"pixels must be finite numbers, found {arr[tuple(bad)]} at index "
                         f"{_index_text(bad, shape)} (shape {shape})")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        bad = np.argwhere((arr < 0) | (arr > 255))[0]
        raise ValueError(f"pixels must lie in [0, 255] (or [0, 1]), found "
                         f"{arr[tuple(bad)]:g} at index {_index_text(bad, shape)} "
                         f"(shape {shape})")
    if arr.dtype == np.uint8:
        # float32(x) / 255 in float32 is exactly float32(x / 255.0) for every
        # uint8 x (checked in the tests), and skips the float64 round trip.
        out = arr.astype(np.float32, order="C")
        if hi > 1:
            out /= np.float32(255.0)
        return out
    arr = arr.astype(np.float64, copy=False)
    if hi > 1:
        arr = arr / 255.0
    return np.ascontiguousarray(arr, dtype=np.float32)


def _index_text(flat_index, shape):
    """An index into the (N, 1, H, W) view, as an index into the input's shape."""
    n, _, i, j = (int(v) for v in flat_index)
    if len(shape) == 2:
        return str((i, j))
    if len(shape) == 3:
        return str((n, i, j))
    return str((n, 0, i, j))


def _numeric_array(a):
    """``a`` as a numeric ndarray (int, uint or float; lists become float64),
    rejecting non-numbers and ragged lists."""
    if isinstance(a, np.ndarray):
        kind = a.dtype.kind
        if kind in "iuf":
            return a
        if kind == "b":
            raise ValueError(f"pixels must be numbers, got a boolean array (shape {a.shape})")
        if kind != "O":
            raise ValueError(f"pixels must be numbers, got an array of dtype {a.dtype} "
                             f"(shape {a.shape})")
        obj = a
    elif isinstance(a, (list, tuple)):
        try:
            obj = np.array(a, dtype=object)
        except (ValueError, TypeError):
            raise ValueError("pixels must be a rectangular nested list (every row the same "
                             "length); got a ragged list") from None
    else:
        raise ValueError(f"pixels must be a nested list of numbers or a numpy array, got "
                         f"{type(a).__name__}")
    types = set(map(type, obj.flat))
    for t in types:
        if issubclass(t, (list, tuple, np.ndarray)):
            raise ValueError(f"pixels must be a rectangular nested list (every row the same "
                             f"length); got a ragged list (regular part has shape "
                             f"{obj.shape})")
    for t in types:
        if issubclass(t, (bool, np.bool_)):
            raise ValueError("pixels must be numbers, found a boolean (true/false)")
        if not issubclass(t, _NUMBER_TYPES):
            what = "null (None)" if t is type(None) else f"a {t.__name__}"
            raise ValueError(f"pixels must be numbers, found {what}")
    try:
        return obj.astype(np.float64)
    except OverflowError:
        raise ValueError("pixels must lie in [0, 255] (or [0, 1]), found an integer too "
                         "large to represent") from None
