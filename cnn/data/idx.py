"""IDX files (the MNIST format), gzipped or not, read into NumPy arrays.

The header's claimed size is checked against the real payload before anything
that large is allocated; a gzipped payload is read in chunks and never kept
past the claimed size, so neither a lying header nor a gzip bomb costs more
memory or time than the real data.
"""
import gzip
import os
import zlib

import numpy as np

from cnn.data.errors import DataError

# IDX type code -> big-endian dtype of the payload.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_TYPE_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int",
                  0x0D: "float", 0x0E: "double"}
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# Once a gzipped payload is known to be too long, keep counting at most this
# many extra bytes for the message (a gzip bomb must not keep us busy).
_COUNT_EXTRA_LIMIT = 1 << 26


def _header_error(path, what):
    return DataError(f"{path}: not a valid IDX file: {what}")


def read_idx(path):
    """Read an IDX file (the MNIST format), gzipped or not, into a NumPy array.

    Gzip is detected by its magic bytes (1f 8b), not by the file name. The
    header is two zero bytes, a type code (0x08 ubyte, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64, all big-endian), the number of
    dimensions ``ndim`` and ``ndim`` big-endian uint32 sizes; the payload must
    hold exactly the number of bytes those sizes give. The size the header
    claims is checked against the real payload before anything that large is
    allocated, so a lying header fails fast with a :class:`DataError`.

    Returns an array of shape ``dims`` (e.g. ``(N, 28, 28)`` for images,
    ``(N,)`` for labels) in native byte order: uint8, int8, int16, int32,
    float32 or float64 according to the type code.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        start = f.read(2)
        f.seek(0)
        if start == GZIP_MAGIC:
            return _read_idx_gzip(path, f)
        return _read_idx_plain(path, f)


def _parse_header(path, stream, compressed):
    """Read the header from ``stream``; return (dtype, dims, header_bytes, payload_bytes)."""
    where = " (after gunzip)" if compressed else ""
    magic = stream.read(4)
    if len(magic) < 4:
        raise _header_error(path, f"{len(magic)} bytes{where}, too short for the 4-byte "
                                  f"magic number")
    if magic[0] != 0 or magic[1] != 0:
        raise _header_error(path, f"bad magic number 0x{magic.hex()}{where}: an IDX file "
                                  f"starts with two zero bytes, a type code and the "
                                  f"number of dimensions")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {n}" for c, n in IDX_TYPE_NAMES.items())
        raise _header_error(path, f"unknown data type code 0x{code:02X} in magic number "
                                  f"0x{magic.hex()}; known codes: {known}")
    if ndim == 0:
        raise _header_error(path, f"magic number 0x{magic.hex()} gives 0 dimensions")
    raw = stream.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise _header_error(path, f"header truncated{where}: {ndim} dimensions need "
                                  f"{4 * ndim} bytes of sizes after the magic number, "
                                  f"found {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    return dtype, dims, 4 + 4 * ndim, count * dtype.itemsize


def _size_error(path, dims, dtype, header, expected, actual, compressed, at_least=False):
    what = "decompressed payload" if compressed else "payload"
    if actual < expected:
        problem = "truncated"
    else:
        problem = "has trailing bytes"
    shown = f"more than {actual}" if at_least else str(actual)
    return DataError(
        f"{path}: IDX file {problem}: header says shape {dims} of "
        f"{IDX_TYPE_NAMES[_code_of(dtype)]} = {expected} bytes of payload after the "
        f"{header}-byte header, but the {what} is {shown} bytes")


def _code_of(dtype):
    for code, dt in IDX_DTYPES.items():
        if dt == dtype:
            return code
    raise AssertionError(dtype)


def _finish(buffer, dtype, dims):
    arr = np.frombuffer(buffer, dtype=dtype).reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    elif dtype.kind == "u":
        arr = arr.view(np.uint8)
    else:
        arr = arr.view(np.int8)
    return arr


def _read_idx_plain(path, f):
    dtype, dims, header, expected = _parse_header(path, f, compressed=False)
    actual = os.fstat(f.fileno()).st_size - header
    if actual != expected:
        raise _size_error(path, dims, dtype, header, expected, actual, compressed=False)
    # The file really is this long, so this allocation is the file's own size.
    buf = bytearray(expected)
    got = f.readinto(buf)
    if got != expected:  # the file changed under us
        raise _size_error(path, dims, dtype, header, expected, got, compressed=False)
    return _finish(buf, dtype, dims)


def _read_idx_gzip(path, f):
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            dtype, dims, header, expected = _parse_header(path, g, compressed=True)
            # The decompressed size is unknown until the end, so read in chunks
            # and keep at most `expected` bytes: memory follows the real data,
            # never the header's claim.
            buf, total, at_least = bytearray(), 0, False
            while True:
                chunk = g.read(_CHUNK)
                if not chunk:
                    break
                if total < expected:
                    buf += chunk[:expected - total]
                total += len(chunk)
                if total > expected + _COUNT_EXTRA_LIMIT:
                    at_least = True
                    break
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip file: {e}") from None
    if total != expected:
        raise _size_error(path, dims, dtype, header, expected, total, compressed=True,
                          at_least=at_least)
    return _finish(buf, dtype, dims)
