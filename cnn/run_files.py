"""The files a training run writes, side by side with its weights file:
``models/NAME.npz`` (weights), ``.ckpt`` (checkpoint), ``.history.json``,
``.history.csv`` and ``.png`` (learning curves).

Each is written atomically (``cnn.io.atomic_write``), so an I/O error leaves the
earlier version intact: ``write_output`` turns it into ``OutputError``, which
the CLI reports in one line with exit status 74. ``check_output`` finds what
would stop the writes (a folder in the way, no permission, no space) before the
training starts, not after it.
"""
import os
import re
import shutil
import time

from cnn._cli import unwritable_folder


def default_out(arch):
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(arch))[0])
    return os.path.join("models", f"{stem or 'model'}.npz")


def checkpoint_path(out):
    return sidecar(out, ".ckpt")


def sidecar(out, suffix):
    stem = out[:-4] if out.endswith(".npz") else out
    return stem + suffix


def weights_path(out):
    """``out`` with the .npz suffix the service looks for."""
    return out if out.endswith(".npz") else out + ".npz"


def output_files(out):
    return [out, checkpoint_path(out), sidecar(out, ".history.json"),
            sidecar(out, ".history.csv"), sidecar(out, ".png")]


def check_output(out, need_bytes):
    """Why the run's files could not be written, or None. Found before training,
    not after it."""
    for path in output_files(out):
        if os.path.isdir(path):
            return f"--out: {path!r} is a folder; give a file name such as {out!r}/model.npz" \
                if path == out else f"--out: {path!r} (written beside {out!r}) is a folder"
    folder = os.path.dirname(os.path.abspath(out))
    problem = unwritable_folder(out)
    if problem:
        return f"--out: {problem}"
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        return (f"--out: {folder!r} has {free / 2**20:.1f} MiB free; the run's files need "
                f"about {need_bytes / 2**20:.1f} MiB")
    return None


# atomic_write's temporary files (.NAME.XXXXXXXX.tmp) older than this were left
# by a killed writer: a live one writes its file within seconds.
STALE_TEMP_SECONDS = 600


def remove_stale_temp_files(out, max_age=STALE_TEMP_SECONDS):
    """Remove the temporary files a killed write of the run's files left behind
    (never a live writer's: only files untouched for ``max_age`` seconds).
    Returns their paths."""
    removed, now = [], time.time()
    for path in output_files(out):
        folder, name = os.path.split(os.path.abspath(path))
        pattern = re.compile(re.escape(f".{name}.") + r"[A-Za-z0-9_]+\.tmp")
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if (pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
                        and now - entry.stat(follow_symlinks=False).st_mtime > max_age):
                    os.unlink(entry.path)
                    removed.append(entry.path)
            except OSError:            # gone meanwhile, or not ours to remove
                pass
    return removed


class OutputError(Exception):
    """A file of the run could not be written; its earlier version is intact."""


def write_output(path, save):
    try:
        save()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
