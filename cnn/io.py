"""Weights files: one NumPy ``.npz`` archive, no pickle, versioned.

Members:
    __meta__          a JSON string: format name and version, the architecture
                      (layer configs), input shape, class names, normalisation
                      and the training summary
    param/LAYER.NAME  every parameter and buffer (e.g. param/0.w, param/1.running_mean)
Checkpoints (``--resume``) are the same format with more members: the optimizer
state under opt/SLOT/LAYER.NAME and the loop state (epoch, RNG states,
history) in the JSON under "checkpoint". No other member is allowed.

Reading a file costs what the format defines, checked before it is spent:
the file and the declared uncompressed sizes of its members are capped
(``max_bytes``, default MAX_BYTES), as are its zip directory and metadata;
every member's .npy header must describe exactly the bytes the member holds;
``load_model`` reads no ``opt/`` member and builds the model only after the
parameter shapes its architecture declares match the stored headers. A file
within the cap costs at most about 4 x its arrays while loading (the arrays,
the built parameters and their float64 random initialisation).

A file that is not a weights file is named for what it is when that is
plain from its first bytes or its zip members (a PNG or other image, JSON or
text, gzip, HDF5, a pickle, a PyTorch zip, a plain ``np.savez`` archive), with
what was expected. A checkpoint (``.ckpt``) is a weights file with more
members and loads like the ``.npz`` beside it.

Files are written atomically: to a temporary file in the same folder, synced,
then renamed over the target, so a crash mid-write leaves the old file whole.
"""
import codecs
import collections
import contextlib
import datetime
import json
import math
import os
import re
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from cnn._npy import NpyHeaderError, read_npy_header
from cnn.layers import (
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
)
from cnn.model import Sequential, check_state_shapes

FORMAT = "cnn-weights"
VERSION = 1

# What one file may cost to read. MAX_BYTES bounds a file's arrays (their
# declared uncompressed sizes, and the file itself): the largest named
# architecture, convnet_deep, is 3.5 MB of float32 weights and 10.5 MB as an
# Adam checkpoint. Pass max_bytes= to load_model/read_model_file for bigger models.
MAX_BYTES = 256 << 20
MAX_META_BYTES = 16 << 20        # the JSON metadata: a few KB in practice
MAX_DIRECTORY_BYTES = 1 << 20    # the zip's table of contents: ~100 bytes per member
_MEMBER = re.compile(r"__meta__\.npy|param/[^/]+\.npy|opt/[^/]+/[^/]+\.npy")


class ModelFileError(ValueError):
    """A weights file that is missing, corrupt, truncated, too large or not ours.

    ``str()`` is "PATH: PROBLEM"; ``problem`` alone is there for callers that
    name the file their own way (the service names it relative to its folder).
    """

    def __init__(self, path, problem):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


EXPECTED = "a cnn weights file (.npz written by python -m cnn.train)"

# Leading bytes of files people mistake for weights files -> what to call them.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model?)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
)


def _kind_of(head):
    """What a file that is not a zip archive is, from its first bytes, or None."""
    if not head:
        return "is empty (0 bytes)"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return f"is {kind}"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "is a WEBP image"
    if head[:2] == b"BM" and b"\x00" in head[2:14]:
        return "is a BMP image"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle (torch.save, joblib, pickle.dump)"
    try:   # text: valid UTF-8 (a character cut at the end of the head is fine), no NULs
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return "is a JSON file" if text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[") \
        else "is a text file"


def _kind_of_zip(names):
    """What a zip archive without ``__meta__`` is, from its member names."""
    if any(n.endswith("data.pkl") for n in names):
        return "is a PyTorch file (torch.save)"
    arrays = [n[:-len(".npy")] for n in names if n.endswith(".npy")]
    if arrays and len(arrays) == len(names):
        listed = ", ".join(map(repr, arrays[:5])) + (", ..." if len(arrays) > 5 else "")
        return f"is a NumPy archive of arrays {listed} (np.savez) with no __meta__ member"
    listed = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
    return f"is a zip archive ({listed or 'empty'}) with no __meta__ member"


def _umask():
    try:   # Linux: read it without changing it (os.umask would, for all threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _file_mode(path):
    """The existing file's mode, else what open() would give a new file."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file, then rename it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); give it the mode a plain
            # open() would (or keep the replaced file's mode).
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _file_mode(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def model_meta(model, summary=None):
    return {"format": FORMAT, "version": VERSION,
            "architecture": model.config(),
            "input_shape": list(model.input_shape),
            "class_names": list(model.class_names) if model.class_names else None,
            "normalization": model.normalization,
            "summary": summary or {},
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def save_model(path: str | os.PathLike[str], model: Sequential,
               summary: Mapping[str, Any] | None = None,
               checkpoint: Mapping[str, Any] | None = None,
               optimizer_arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Write ``model`` (and, for a checkpoint, the training state) to ``path``."""
    meta = model_meta(model, summary)
    if checkpoint is not None:
        meta["checkpoint"] = checkpoint
    arrays: dict[str, Any] = {f"param/{k}": v for k, v in model.state().items()}
    for k, v in (optimizer_arrays or {}).items():
        arrays[f"opt/{k}"] = v
    arrays["__meta__"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


class ArrayHeader(NamedTuple):
    """What a member's .npy header declares, read before any of its data."""
    dtype: np.dtype
    shape: tuple
    info: zipfile.ZipInfo


def _size(nbytes):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} bytes"


@contextlib.contextmanager
def _reading(path):
    """What zipfile and numpy raise on a damaged archive, as ModelFileError."""
    try:
        yield
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
            RuntimeError, MemoryError, struct.error) as exc:
        # RuntimeError/NotImplementedError: zipfile on a corrupted header (encryption
        # flag, compression method, version).
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ModelFileError(path, f"is not a readable cnn weights file (corrupt, "
                                   f"truncated or another format): {detail}") from None


class _Archive:
    """An open weights file: its members' names and sizes checked against the
    format and the caps, the .npy headers of the members a caller may read
    (all, or all but ``opt/`` with ``optimizer=False``) checked against their
    sizes, its metadata read; ``read`` then reads the arrays a caller needs."""

    def __init__(self, path, max_bytes=None, optimizer=True):
        self.path = path = os.fspath(path)
        self.optimizer = optimizer
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) \
                or self.max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        if not os.path.exists(path):
            raise ModelFileError(path, "does not exist")
        if os.path.isdir(path):
            raise ModelFileError(path, "is a folder, not a weights file")
        self.file = self.zip = None
        with _reading(path):
            self.file = open(path, "rb")
            try:
                self._open()
            except BaseException:
                self.close()
                raise

    def _open(self):
        path, f = self.path, self.file
        size = os.fstat(f.fileno()).st_size
        if size > self.max_bytes:
            raise ModelFileError(path, f"is {_size(size)}, more than the "
                                       f"{_size(self.max_bytes)} limit for a weights file")
        head = f.read(64)
        if head.startswith(b"\x93NUMPY"):
            raise ModelFileError(path, f"is a single NumPy array (.npy), not {EXPECTED}")
        # Anything but a zip (np.savez writes one) is named for what it is; a damaged
        # zip goes on to zipfile's own complaint.
        kind = None if head.startswith(b"PK") else _kind_of(head)
        if kind:
            raise ModelFileError(path, f"{kind}, not {EXPECTED}")
        # zipfile turns every entry of the central directory into a Python
        # object (~10x its size): check the directory's declared size first.
        end = zipfile._EndRecData(f)   # noqa: SLF001 - zipfile's own end-record reader
        if end is None:
            raise zipfile.BadZipFile("File is not a zip file")
        if end[zipfile._ECD_SIZE] > MAX_DIRECTORY_BYTES:   # noqa: SLF001
            raise ModelFileError(path, f"its zip directory is {_size(end[zipfile._ECD_SIZE])}"
                                       f" ({end[zipfile._ECD_ENTRIES_TOTAL]:,} members), "
                                       f"more than a weights file needs "
                                       f"({_size(MAX_DIRECTORY_BYTES)})")
        self.zip = zipfile.ZipFile(f)
        infos = self.zip.infolist()
        names = [info.filename for info in infos]
        if "__meta__.npy" not in names:
            raise ModelFileError(path, f"{_kind_of_zip(names)}, not {EXPECTED}")
        # Members the format does not define are refused, unread: a file holding
        # them was not written by cnn (another program's archive, a tampered
        # file), and saying so beats serving it.
        unknown = [n for n in names if not _MEMBER.fullmatch(n)]
        if unknown:
            raise ModelFileError(path, f"holds {unknown[0]!r}, which is not part of a cnn "
                                       f"weights file (only __meta__, param/... and opt/... "
                                       f"arrays are)")
        name, count = collections.Counter(names).most_common(1)[0]
        if count > 1:
            raise ModelFileError(path, f"holds member {name!r} {count} times")
        # Declared uncompressed sizes, checked before anything is decompressed;
        # reads stop at them (zipfile cuts a member there, and fails its CRC).
        total = sum(info.file_size for info in infos)
        if total > self.max_bytes:
            big = max(infos, key=lambda info: info.file_size)
            raise ModelFileError(path, f"its arrays take {_size(total)} uncompressed (the "
                                       f"largest, {big.filename}, {_size(big.file_size)}), "
                                       f"more than the {_size(self.max_bytes)} limit for a "
                                       f"weights file")
        self.headers = {info.filename[:-len(".npy")]: self._header(info) for info in infos
                        if self.optimizer or not info.filename.startswith("opt/")}
        self.meta = self._meta()

    def _header(self, info):
        with self.zip.open(info) as f:
            try:
                shape, dtype = read_npy_header(f)
            except NpyHeaderError as exc:
                raise ModelFileError(self.path, f"{info.filename} has an unreadable .npy "
                                                f"header ({exc})") from None
            offset = f.tell()
        if dtype.hasobject:
            raise ModelFileError(self.path, f"{info.filename} holds Python objects "
                                            f"(pickles), which cnn never writes")
        if any(n < 0 for n in shape):
            raise ValueError(f"{info.filename}: negative dimension in shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise ModelFileError(self.path, f"{info.filename} declares a {dtype} array of "
                                            f"shape {shape} ({_size(nbytes)}) but holds "
                                            f"{_size(max(info.file_size - offset, 0))}")
        return ArrayHeader(dtype, tuple(shape), info)

    def _meta(self):
        path, header = self.path, self.headers["__meta__"]
        if header.dtype.kind != "U" or header.shape != ():
            raise ModelFileError(path, f"its metadata (__meta__) is not a JSON string but a "
                                       f"{header.dtype} array of shape {header.shape}")
        if header.info.file_size > MAX_META_BYTES:
            raise ModelFileError(path, f"its metadata is {_size(header.info.file_size)}, "
                                       f"more than a weights file needs "
                                       f"({_size(MAX_META_BYTES)})")
        text = str(self.read(["__meta__"])["__meta__"])
        try:
            meta = json.loads(text)
        except (ValueError, RecursionError) as exc:   # JSONDecodeError, too deep, huge ints
            raise ModelFileError(path, f"its metadata is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            name = meta.get("format") if isinstance(meta, dict) else None
            raise ModelFileError(path, f"is not a cnn weights file (format {name!r}; "
                                       f"expected {EXPECTED})")
        version = meta.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelFileError(path, f"has an invalid format version {version!r}")
        if version > VERSION:
            raise ModelFileError(path, f"has format version {version}; this cnn reads "
                                       f"versions up to {VERSION}: upgrade cnn")
        return meta

    def read(self, names):
        """{name: array} of the members ``names``; each read stops at the size its
        checked header declares."""
        arrays = {}
        with _reading(self.path):
            for name in names:
                with self.zip.open(self.headers[name].info) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
        return arrays

    def close(self):
        if self.zip is not None:
            self.zip.close()
        if self.file is not None:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_model_file(path, max_bytes=None):
    """(meta dict, {member: array}) of a weights file, or ModelFileError.

    Every array member is returned (``param/...``, and ``opt/...`` for a
    checkpoint). ``max_bytes`` (default MAX_BYTES) caps the file's arrays."""
    with _Archive(path, max_bytes) as archive:
        return archive.meta, archive.read([n for n in archive.headers if n != "__meta__"])


_PARAM_FREE = (ReLU, Flatten, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Dropout)


def declared_shapes(model):
    """{key: shape} of every parameter and buffer ``model.build`` would create,
    worked out from the layer configs alone: building allocates (and randomly
    initialises) them, which a hostile architecture must not get to do."""
    shapes, shape = {}, model.input_shape
    for i, layer in enumerate(model.layers):
        try:
            out = tuple(layer.compute_output_shape(shape))
        except ValueError as exc:
            raise ValueError(f"layer {i} ({layer!r}): {exc}") from None
        if type(layer) is Conv2D:
            shapes[f"{i}.w"] = (layer.filters, shape[0], *layer.kernel)
            shapes[f"{i}.b"] = (layer.filters,)
        elif type(layer) is Dense:
            shapes[f"{i}.w"], shapes[f"{i}.b"] = (layer.units, shape[0]), (layer.units,)
        elif type(layer) is BatchNorm2D:
            for name in ("gamma", "beta", "running_mean", "running_var"):
                shapes[f"{i}.{name}"] = (shape[0],)
        elif type(layer) not in _PARAM_FREE:   # a new layer type: teach this function
            raise ValueError(f"layer {i}: cannot check the parameters of a "
                             f"{type(layer).__name__} layer before building it")
        shape = out
    return shapes


def _check_declared(path, declared, stored, max_bytes):
    """The architecture's parameters against the stored headers, before building:
    its total size under the cap, then the same names and shapes."""
    dtypes = sorted({str(h.dtype) for h in stored.values()}) or ["float32"]
    if len(dtypes) > 1 or dtypes[0] not in ("float32", "float64"):
        raise ValueError(f"weights must all be float32 or all float64, got {dtypes}")
    dtype = np.dtype(dtypes[0])
    count = sum(math.prod(shape) for shape in declared.values())
    if count * dtype.itemsize > max_bytes:
        raise ModelFileError(path, f"its architecture declares {count:,} parameters "
                                   f"({_size(count * dtype.itemsize)} as {dtype}), more than "
                                   f"the {_size(max_bytes)} limit for a weights file")
    check_state_shapes(declared, {key: header.shape for key, header in stored.items()})
    return dtype


def _valid_normalization(norm, channels):
    """One mean/std for every channel (numbers), or one per channel (lists of
    ``channels`` numbers: colour models)."""
    if not isinstance(norm, dict):
        return False
    mean, std = norm.get("mean"), norm.get("std")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    if isinstance(mean, list) and isinstance(std, list):
        return (len(mean) == len(std) == channels and all(map(number, mean))
                and all(number(v) and v > 0 for v in std))
    return number(mean) and number(std) and std > 0


def load_model(path: str | os.PathLike[str], backend: str | None = None,
               threads: int | None = None, max_bytes: int | None = None) -> Sequential:
    """The model saved at ``path``, ready for ``predict``/``predict_proba`` on raw pixels.

    Reads only ``__meta__`` and the ``param/`` members, and builds the model only
    once the shapes its architecture declares match the stored headers and fit
    in ``max_bytes`` (default MAX_BYTES); ModelFileError otherwise."""
    path = os.fspath(path)
    with _Archive(path, max_bytes, optimizer=False) as archive:
        meta = archive.meta
        from cnn.backends import get_backend
        get_backend(backend)   # a bad backend is the caller's error, not the file's
        stored = {k[len("param/"):]: h for k, h in archive.headers.items()
                  if k.startswith("param/")}
        try:
            model = Sequential.from_config(meta["architecture"],
                                           class_names=meta["class_names"])
            dtype = _check_declared(path, declared_shapes(model), stored, archive.max_bytes)
            params = {k[len("param/"):]: v for k, v in
                      archive.read([f"param/{k}" for k in stored]).items()}
            model.build(seed=0, dtype=dtype, backend=backend, threads=threads)
            model.load_state(params)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(path, f"the saved architecture and weights do not fit "
                                       f"together ({exc})") from None
    bad = sorted(k for k, v in params.items() if not np.isfinite(v).all())
    if bad:
        raise ModelFileError(path, f"weights {bad} hold NaN or infinite values")
    norm = meta.get("normalization")
    channels = model.input_shape[0]
    if norm is not None and not _valid_normalization(norm, channels):
        raise ModelFileError(path, f"bad normalization {norm!r} (expected "
                                   f'{{"mean": number, "std": positive number}}, lists of '
                                   f"{channels} such numbers, or null)")
    model.normalization = norm
    model.summary_info = meta.get("summary", {})
    model.meta = meta
    model.path = path
    return model
