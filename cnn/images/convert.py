"""From a decoded Pillow image to the model's pixels: reduce first, then
convert the mode (16-bit, alpha, palette) to grey, decide whether to invert,
and fit into the target size."""
import numbers

import numpy as np

from cnn.images._pillow import _pil

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


def _border_sums(batch):
    """(per-image sums (N,) int64, pixel values per image) of the 1-pixel
    borders of a uint8 batch (N, h, w) or (N, h, w, C): the border mean of
    image i is sums[i] / count, as the mean of _border(batch[i])."""
    n, h, w = batch.shape[:3]
    per_pixel = int(np.prod(batch.shape[3:], dtype=np.int64))
    if w <= 2 or h <= 2:
        return batch.reshape(n, -1).sum(axis=1, dtype=np.int64), h * w * per_pixel
    sums = sum(part.reshape(n, -1).sum(axis=1, dtype=np.int64)
               for part in (batch[:, 0], batch[:, -1], batch[:, 1:-1, 0], batch[:, 1:-1, -1]))
    return sums, (2 * w + 2 * (h - 2)) * per_pixel


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
