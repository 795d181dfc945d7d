"""Weights files: one NumPy ``.npz`` archive, no pickle, versioned.

Members:
    __meta__          a JSON string: format name and version, the architecture
                      (layer configs), input shape, class names, normalisation
                      and the training summary
    param/LAYER.NAME  every parameter and buffer (e.g. param/0.w, param/1.running_mean)
Checkpoints (``--resume``) are the same format with more members: the optimizer
state under opt/SLOT/LAYER.NAME and the loop state (epoch, RNG states,
history) in the JSON under "checkpoint".

Files are written atomically: to a temporary file in the same folder, synced,
then renamed over the target, so a crash mid-write leaves the old file whole.
"""
import datetime
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from cnn.model import Sequential

FORMAT = "cnn-weights"
VERSION = 1


class ModelFileError(ValueError):
    """A weights file that is missing, corrupt, truncated or not ours."""


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


def save_model(path, model, summary=None, checkpoint=None, optimizer_arrays=None):
    """Write ``model`` (and, for a checkpoint, the training state) to ``path``."""
    meta = model_meta(model, summary)
    if checkpoint is not None:
        meta["checkpoint"] = checkpoint
    arrays = {f"param/{k}": v for k, v in model.state().items()}
    for k, v in (optimizer_arrays or {}).items():
        arrays[f"opt/{k}"] = v
    arrays["__meta__"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_model_file(path):
    """(meta dict, {member: array}) of a weights file, or ModelFileError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"weights file {path!r} does not exist")
    if os.path.isdir(path):
        raise ModelFileError(f"weights file {path!r} is a folder")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):   # a bare .npy array
            raise ModelFileError(f"{path!r} is a single NumPy array (.npy), not a cnn "
                                 f"weights file")
        with npz:
            if "__meta__" not in npz.files:
                raise ModelFileError(f"{path!r} is a NumPy archive but not a cnn weights "
                                     f"file (no __meta__ member)")
            arrays = {name: npz[name] for name in npz.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
            RuntimeError, MemoryError) as exc:
        # RuntimeError/NotImplementedError: zipfile on a corrupted header (encryption
        # flag, compression method, version); MemoryError: a corrupted array header
        # claiming a huge shape.
        raise ModelFileError(f"{path!r} is not a readable cnn weights file (corrupt, "
                             f"truncated or another format): {type(exc).__name__}: "
                             f"{exc}") from None
    try:
        meta = json.loads(str(arrays.pop("__meta__")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFileError(f"{path!r}: its metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path!r} is not a cnn weights file (format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path!r} has an invalid format version {version!r}")
    if version > VERSION:
        raise ModelFileError(f"{path!r} has format version {version}; this cnn reads "
                             f"versions up to {VERSION}: upgrade cnn")
    return meta, arrays


def _valid_normalization(norm):
    if not isinstance(norm, dict):
        return False
    mean, std = norm.get("mean"), norm.get("std")
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
               for v in (mean, std)) and std > 0


def load_model(path, backend=None, threads=None):
    """The model saved at ``path``, ready for ``predict``/``predict_proba`` on raw pixels."""
    meta, arrays = read_model_file(path)
    from cnn.backends import get_backend
    get_backend(backend)   # a bad backend is the caller's error, not the file's
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        model = Sequential.from_config(meta["architecture"], class_names=meta["class_names"])
        dtype = next(iter(params.values())).dtype if params else np.dtype(np.float32)
        bad = [k for k, v in params.items() if v.dtype != dtype]
        if dtype not in (np.float32, np.float64) or bad:
            raise ValueError(f"weights must all be float32 or all float64, got "
                             f"{sorted({str(v.dtype) for v in params.values()})}")
        model.build(seed=0, dtype=dtype, backend=backend, threads=threads)
        model.load_state(params)
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{os.fspath(path)!r}: the saved architecture and weights do "
                             f"not fit together ({exc})") from None
    bad = sorted(k for k, v in params.items() if not np.isfinite(v).all())
    if bad:
        raise ModelFileError(f"{os.fspath(path)!r}: weights {bad} hold NaN or infinite "
                             f"values")
    norm = meta.get("normalization")
    if norm is not None and not _valid_normalization(norm):
        raise ModelFileError(f"{os.fspath(path)!r}: bad normalization {norm!r} (expected "
                             f'{{"mean": number, "std": positive number}} or null)')
    model.normalization = norm
    model.summary_info = meta.get("summary", {})
    model.meta = meta
    model.path = os.fspath(path)
    return model
