"""Reading the header of an untrusted .npy stream: the service's uploads and the
members of a weights file go through the same code.

NumPy's header parser (``ast.literal_eval`` of a Python dict literal) raises
whatever its input provokes: ValueError with the repr of an AST node and its
memory address, SyntaxError, tokenize.TokenError, RecursionError. The message
of :class:`NpyHeaderError` says what is wrong in the terms of the file, without
Python internals, and is short.
"""
import re

import numpy as np

_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


class NpyHeaderError(ValueError):
    """A .npy header that cannot be read; the message is for people."""


def describe(exc, limit=200):
    """An exception's message for a user: short, and without the Python object
    reprs (``<ast.Call object at 0x7f...>``) of a parser's internals."""
    text = str(exc).strip() or type(exc).__name__
    if text.startswith("malformed node or string"):   # ast.literal_eval
        text = ("it must be a dictionary of plain literals (strings, numbers, booleans, "
                "tuples) as np.save writes it")
    text = _OBJECT_REPR.sub("an expression", text)
    text = re.sub(r"0x[0-9a-fA-F]{6,}", "an address", text)
    return text if len(text) <= limit else text[:limit] + "..."


def read_npy_header(fp, with_order=False):
    """(shape, dtype) of the .npy stream ``fp``, left at the start of its data
    ((shape, dtype, fortran_order) with ``with_order``).

    Versions 1.0 and 2.0 only; anything NumPy's parser raises becomes an
    :class:`NpyHeaderError` (object dtypes are returned: callers refuse them)."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported "
                             f"(use 1.0 or 2.0)")
    except Exception as exc:  # noqa: BLE001 - NumPy's header parser on untrusted bytes
        raise NpyHeaderError(describe(exc)) from None
    return (tuple(shape), dtype, bool(fortran)) if with_order else (tuple(shape), dtype)
