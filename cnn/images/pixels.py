"""Raw pixel arrays (JSON lists or ndarrays) as the network's float input."""
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from cnn._checks import pair

_NUMBER_TYPES = (int, float, np.integer, np.floating)


def pixels_from_array(a: ArrayLike, *, size: int | tuple[int, int] = (28, 28),
                      channels: Literal[1, 3] = 1) -> np.ndarray:
    """Raw pixels (nested lists from JSON, or an ndarray) as float32 (N, C, H, W) in [0, 1].

    Accepted shapes, with (H, W) == ``size`` exactly (arrays are never
    resized): for ``channels=1``, one image (H, W) or (1, H, W), a batch
    (N, H, W) or (N, 1, H, W); for ``channels=3`` (RGB), one image (3, H, W)
    or (H, W, 3), a batch (N, 3, H, W) or (N, H, W, 3) (channels-last, as
    Pillow and Keras give them; a shape that reads both ways is taken as
    channels-first). Pixels are already model input: not inverted here.

    Values are numbers in [0, 255]: if any value is > 1 the whole batch is
    read as 0-255 and divided by 255, otherwise it is taken as 0-1 already
    (so a batch whose values are all 0 or 1 means black and white).
    Non-integer values are fine on either scale.

    Raises ValueError naming ``pixels`` for NaN or infinity, booleans,
    strings or other non-numbers, ragged lists, a wrong shape, no images,
    and values outside [0, 255].
    """
    h, w = pair(size, "size", 1)
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    arr = _numeric_array(a)
    if arr.size == 0:
        raise ValueError(f"pixels is empty (shape {arr.shape}); expected at least one "
                         f"{h}x{w} image")
    shape, source = arr.shape, arr
    arr = _as_batch(arr, h, w, channels)
    if arr is None:
        expected = (f"({h}, {w}), (N, {h}, {w}) or (N, 1, {h}, {w})" if channels == 1 else
                    f"(N, 3, {h}, {w}) or (N, {h}, {w}, 3) (or one image (3, {h}, {w}) or "
                    f"({h}, {w}, 3))")
        raise ValueError(f"pixels must have shape {expected}, got {shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(source))[0]
        raise ValueError(f"pixels must be finite numbers, found {source[tuple(bad)]} at index "
                         f"{_index_text(bad)} (shape {shape})")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        bad = np.argwhere((source < 0) | (source > 255))[0]
        raise ValueError(f"pixels must lie in [0, 255] (or [0, 1]), found "
                         f"{source[tuple(bad)]:g} at index {_index_text(bad)} "
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


def _as_batch(arr, h, w, channels):
    """``arr`` as an (N, C, H, W) view, or None when its shape is not accepted."""
    if channels == 1:
        if arr.ndim < 2 or arr.ndim > 4 or arr.shape[-2:] != (h, w) \
                or (arr.ndim == 4 and arr.shape[1] != 1):
            return None
        return arr.reshape((-1, 1, h, w))
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        return None
    if arr.shape[1:] == (channels, h, w):
        return arr
    if arr.shape[1:] == (h, w, channels):
        return arr.transpose(0, 3, 1, 2)
    return None


def _index_text(index):
    """An index into the input, as the input's own nesting reads it."""
    return str(tuple(int(v) for v in index))


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
