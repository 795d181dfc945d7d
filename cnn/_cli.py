"""Argument types, error exits and the opening shared by the command-line tools.

argparse calls a type function on the text of an argument; raising
ArgumentTypeError makes it exit 2 with "argument --NAME: MESSAGE".
``open_model`` is how the tools that run a weights file (evaluate, predict) start.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

from cnn.backends import BackendUnavailable, fallback_note, get_backend
from cnn.io import ModelFileError, load_model

IO_ERROR = getattr(os, "EX_IOERR", 74)   # exit status of an I/O error (sysexits.h)


def _int_at_least(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text):
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text):
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def fail(prog, message, code=2):
    """Print ``prog: error: message`` to stderr and return the exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def open_model(prog, path, backend=None, threads=None):
    """Check ``backend``, say if the kernels are not built, load the weights file.

    Returns ``(model, None)``, or ``(None, 2)`` once ``prog: error: ...`` names the
    argument at fault (``--backend`` or ``MODEL``). The backend is checked before
    the file is read, so a bad choice is reported as the user's, not the file's.
    """
    try:
        get_backend(backend)
    except (BackendUnavailable, ValueError) as exc:
        return None, fail(prog, f"--backend: {exc}")
    note = fallback_note(backend)
    if note:
        print(f"{prog}: {note}", file=sys.stderr)
    try:
        return load_model(path, backend=backend, threads=threads), None
    except ModelFileError as exc:
        return None, fail(prog, f"MODEL: {exc}")


def steps_or_seconds(text):
    """``N`` steps, or a time: ``Ns`` seconds, ``Nm`` minutes -> ("steps"|"seconds", N)."""
    units = {"s": 1, "m": 60}
    unit = units.get(text[-1:].lower()) if text else None
    number = text[:-1] if unit else text
    try:
        value = float(number) * unit if unit else int(number)
    except ValueError:
        value = None
    if value is None or not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number of steps (e.g. 200) or a time "
                                         f"(e.g. 30s, 5m), got {text!r}")
    return ("seconds", value) if unit else ("steps", value)


def unwritable_folder(path):
    """Why no file can be written beside ``path`` (its folder is made if missing),
    or None. Found by writing a temporary file there, as ``cnn.io.atomic_write``
    will: os.access answers yes to root whatever the mount says."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"cannot write in {folder!r}: {exc.strerror or exc}"
    return None
