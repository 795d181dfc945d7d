"""Hostile weights files, built small: archives whose headers promise far more
than the file holds. Shared by tests/test_io.py and tests/service/test_models.py.

The zip writer is hand-rolled because zipfile cannot write a member whose
compressed bytes or declared sizes we choose (a zip bomb, a lying header).
"""
import io
import json
import struct
import zipfile
import zlib

import numpy as np

GiB = 1 << 30


def npy_header(dtype, shape):
    """The .npy header (format 1.0) of an array of ``dtype`` and ``shape``, without data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(shape)})
    return buf.getvalue()


def raw_npy_header(text):
    """A version 1.0 .npy header whose dictionary is ``text`` verbatim (no data):
    whatever NumPy's header parser may be fed."""
    data = text.encode("latin1")
    pad = 64 - (10 + len(data) + 1) % 64
    return (b"\x93NUMPY\x01\x00" + (len(data) + pad + 1).to_bytes(2, "little") + data
            + b" " * pad + b"\n")


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def stored(data):
    """A member stored as is: (payload, method, file_size, crc)."""
    return data, zipfile.ZIP_STORED, len(data), zlib.crc32(data)


def deflated_zeros(prefix, nbytes, block=1 << 20, crc=True):
    """A deflated member of ``prefix`` + ``nbytes`` zero bytes (``nbytes`` a
    multiple of ``block``), about nbytes / 1000 on disk, written in milliseconds:
    after a full flush the compressor starts afresh, so one compressed block of
    zeros repeats. ``crc=False`` skips the CRC (0.3 s per GiB) and stores 0."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    payload = head + zeros * (nbytes // block) + c.flush()
    value = 0
    if crc:
        value = zlib.crc32(prefix)
        for _ in range(nbytes // block):
            value = zlib.crc32(bytes(block), value)
    return payload, zipfile.ZIP_DEFLATED, len(prefix) + nbytes, value


def write_zip(path, members, local_headers=True):
    """Write ``members`` ({name: (payload, method, file_size, crc)}) as a zip
    archive; ``local_headers=False`` writes the central directory alone."""
    body, directory = bytearray(), bytearray()
    for name, (payload, method, file_size, crc) in members.items():
        raw = name.encode()
        offset = len(body)
        if local_headers:
            body += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0x21,
                                crc, len(payload), file_size, len(raw), 0) + raw + payload
        directory += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method,
                                 0, 0x21, crc, len(payload), file_size, len(raw), 0, 0, 0,
                                 0, 0, offset) + raw
    count = min(len(members), 0xFFFF)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory),
                      len(body), 0)
    with open(path, "wb") as f:
        f.write(bytes(body + directory + end))
    return path


def members_of(path):
    """{name: stored member} of every member of a weights file (save_model stores them)."""
    with zipfile.ZipFile(path) as zf:
        return {name: stored(zf.read(name)) for name in zf.namelist()}


def meta_member(meta):
    return stored(npy_bytes(np.array(json.dumps(meta))))


def meta_of(path):
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["__meta__"]))


# --------------------------------------------------------------------------- the files


def unused_member(path, good, nbytes=2 * GiB, crc=True):
    """``good`` plus a member the format does not define (``junk.npy``) holding
    ``nbytes`` of zeros, deflated to about nbytes / 1000."""
    members = members_of(good)
    members["junk.npy"] = deflated_zeros(npy_header(np.float64, (nbytes // 8,)), nbytes,
                                         crc=crc)
    return write_zip(path, members)


def huge_optimizer_member(path, good, nbytes=GiB, crc=False):
    """``good`` plus an optimizer member (a member checkpoints do have) that
    inflates to ``nbytes``."""
    members = members_of(good)
    members["opt/m/0.w.npy"] = deflated_zeros(npy_header(np.float32, (nbytes // 4,)), nbytes,
                                              crc=crc)
    return write_zip(path, members)


def lying_array_header(path, good, shape=(100_000, 100_000)):
    """``good`` whose first weight's .npy header declares ``shape`` (40 GB as
    float32) over 16 bytes of data."""
    members = members_of(good)
    members["param/0.w.npy"] = stored(npy_header(np.float32, shape) + bytes(16))
    return write_zip(path, members)


def huge_architecture(path, good, units=12_755_102):
    """A 4 KB file whose architecture declares flatten -> Dense(units) ->
    Dense(10) on 28x28 images (784 * units + ... parameters: 10^10 for the
    default) next to the tiny weights of ``good`` renamed to fit the keys."""
    meta = meta_of(good)
    meta["architecture"] = {"name": "huge", "input_shape": [1, 28, 28], "layers": [
        {"type": "Flatten"}, {"type": "Dense", "units": units, "init": "he"},
        {"type": "Dense", "units": 10, "init": "glorot"}]}
    tiny = np.zeros((2, 2), np.float32)
    members = {"__meta__.npy": meta_member(meta)}
    for key in ("1.w", "1.b", "2.w", "2.b"):
        members[f"param/{key}.npy"] = stored(npy_bytes(tiny))
    return write_zip(path, members)


def huge_directory(path, count=40_000):
    """A zip of ``count`` central-directory entries and no data (about 50
    bytes each); zipfile would hold a few hundred bytes of Python objects per entry."""
    members = {f"param/{i}.npy": stored(b"") for i in range(count)}
    return write_zip(path, members, local_headers=False)
