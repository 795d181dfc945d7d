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

import numpy as np

from cnn.model import Sequential

FORMAT = "cnn-weights"
VERSION = 1


class ModelFileError(ValueError):
    """A weights file that is missing, corrupt, truncated or not ours."""


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file, then rename it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
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
        with np.load(path, allow_pickle=False) as npz:
            if "__meta__" not in npz.files:
                raise ModelFileError(f"{path!r} is a NumPy archive but not a cnn weights "
                                     f"file (no __meta__ member)")
            arrays = {name: npz[name] for name in npz.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path!r} is not a readable cnn weights file (corrupt, "
                             f"truncated or another format): {exc}") from None
    try:
        meta = json.loads(str(arrays.pop("__meta__")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFileError(f"{path!r}: its metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path!r} is not a cnn weights file (format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise ModelFileError(f"{path!r} has format version {meta.get('version')!r}; this "
                             f"cnn reads versions up to {VERSION}: upgrade cnn")
    return meta, arrays


def load_model(path, backend=None, threads=None):
    """The model saved at ``path``, ready for ``predict``/``predict_proba`` on raw pixels."""
    meta, arrays = read_model_file(path)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        model = Sequential.from_config(meta["architecture"], class_names=meta["class_names"])
        dtype = next(iter(params.values())).dtype if params else np.float32
        model.build(seed=0, dtype=dtype, backend=backend, threads=threads)
        model.load_state(params)
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{os.fspath(path)!r}: the saved architecture and weights do "
                             f"not fit together ({exc})") from None
    model.normalization = meta.get("normalization")
    model.summary_info = meta.get("summary", {})
    model.meta = meta
    model.path = os.fspath(path)
    return model
