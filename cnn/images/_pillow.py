"""Pillow, imported on first use (pixels_from_array works without it), the
exceptions it raises on bad data, and strict truncation handling."""
import struct
import threading

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


def _why(e):
    """An exception as a short reason: "Type: message" (or the type alone)."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


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
