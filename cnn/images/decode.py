"""decode_image / decode_images: open within the limits, load, convert."""
import io
import numbers
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

import numpy as np

from cnn.images._pillow import _decode_errors, _pil, _StrictTruncation, _why
from cnn.images.convert import (
    _border_sums,
    _exif_transpose_method,
    _finish,
    _fit,
    _gray_alpha,
    _reduce_factors,
)
from cnn.images.crop import load_cropped
from cnn.images.errors import ImageError, PixelBudgetError, _label
from cnn.images.limits import ALLOWED_FORMATS, MAX_PIXELS
from cnn.images.options import _check_options
from cnn.images.png import _simple_png, _simple_png_size

# An image file: its bytes or its path.
ImageData = bytes | bytearray | memoryview | str | os.PathLike[str]


def decode_image(data: ImageData, *, size: int | tuple[int, int] = (28, 28),
                 invert: bool | Literal["auto"] = "auto", max_pixels: int = MAX_PIXELS,
                 allowed_formats: Collection[str] = ALLOWED_FORMATS, name: str | None = None,
                 channels: Literal[1, 3] = 1,
                 fit: Literal["pad", "crop"] = "pad") -> np.ndarray:
    """Decode one image file into a uint8 (H, W) array, Fashion-MNIST style, or
    with ``fit="crop"`` as models trained on image folders see it.

    ``fit="crop"`` (``channels`` 1 or 3, the latter giving (H, W, 3) RGB) is
    the pipeline of :mod:`cnn.images.crop`: steps 1-2 below, then that
    module's own. ``fit="pad"`` (the default, grayscale only) is this one:

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
    opts = _check_options(size, invert, max_pixels, allowed_formats, channels, fit)
    return _decode_one(data, None, name, opts)


def decode_images(items: Sequence[ImageData], *, names: Sequence[str | None] | None = None,
                  on_error: Callable[[int, Exception], object] | None = None,
                  max_total_pixels: int | None = None, **kw: Any) -> np.ndarray:
    """Decode a batch of image files (bytes or paths) into uint8 (N, H, W)
    (or (N, H, W, 3) for ``channels=3``).

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
    unknown = set(kw) - {"size", "invert", "max_pixels", "allowed_formats", "channels", "fit"}
    if unknown:
        raise TypeError(f"decode_images got unexpected keyword arguments {sorted(unknown)}")
    opts = _check_options(kw.get("size", (28, 28)), kw.get("invert", "auto"),
                          kw.get("max_pixels", MAX_PIXELS),
                          kw.get("allowed_formats", ALLOWED_FORMATS), kw.get("channels", 1),
                          kw.get("fit", "pad"))
    if max_total_pixels is not None and (
            isinstance(max_total_pixels, bool) or not isinstance(max_total_pixels, numbers.Integral)
            or max_total_pixels < 1):
        raise ValueError(f"max_total_pixels must be a positive int or None, got "
                         f"{max_total_pixels!r}")
    if on_error is not None and not callable(on_error):
        raise TypeError(f"on_error must be callable or None, got {type(on_error).__name__}")
    h, w = opts[0]
    shape = (len(items), h, w) if opts.channels == 1 else (len(items), h, w, 3)
    out = (np.empty if on_error is None else np.zeros)(shape, dtype=np.uint8)
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
            if opts.fit == "crop":
                out[i] = load_cropped(source, opts, _open_checked)
                continue
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
    if not pending or invert is False:  # (none pending for fit="crop")
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
    sums, count = _border_sums(batch)
    return sums > 127 * count


def _decode_one(data, index, name, opts):
    """One image file -> its finished uint8 array of shape ``size``."""
    source = _open_one(data, index, name, opts)
    if opts.fit == "crop":
        return load_cropped(source, opts, _open_checked)
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
    size, invert, max_pixels, allowed, open_formats, channels, fit = opts

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
            # A small PNG is read whole, for the fast path below: decoding a
            # folder of 28x28 PNGs takes 82 us an image this way, 142 us through
            # Image.open (Xeon 2.8 GHz).
            if "PNG" in allowed and fp.read(8) == _PNG_SIGNATURE \
                    and os.fstat(fp.fileno()).st_size <= _SMALL_FILE:
                fp.seek(0)
                data = fp.read()
                fp.close()
                source = _simple_source(data, size, max_pixels, fit, fail)
                if source is not None:
                    return source
                fp = io.BytesIO(data)
                path = None
            else:
                fp.seek(0)
        except OSError as e:
            raise fail(f"cannot read file ({e.strerror or e})") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        path = None
        if "PNG" in allowed:
            source = _simple_source(data, size, max_pixels, fit, fail)
            if source is not None:
                return source
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SMALL_FILE = 1 << 20   # files read whole to try the plain-PNG fast path


def _simple_source(data, size, max_pixels, fit, fail):
    """A fast-path _Source for the bytes of a plain grey PNG, else None."""
    wh = _simple_png_size(data, max_pixels)
    if wh is not None and (fit == "crop" or  # (crop: used when already the size)
                           _reduce_factors(*wh, _fit(*wh, size)) == (1, 1)):
        return _Source(wh[0] * wh[1], fail, png=data)  # (else: reduced by Pillow)
    return None


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
    size, invert, max_pixels, allowed, open_formats = opts[:5]
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
