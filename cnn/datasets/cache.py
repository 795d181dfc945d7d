"""The decode cache: a folder's images decoded once into uint8 ``.npy`` files.

One entry per key (a digest of the file list, sizes, mtimes and the decode
settings): ``CACHE_DIR/<key>/images.npy`` (train then test, so both are slices
of one memory map), ``labels.npy`` and ``meta.json``. An entry is built in a
temporary folder and renamed into place, so a killed run never leaves a half
entry that a later run would trust.
"""
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

from cnn.data import DataError

CACHE_ENV = "CNN_CACHE_DIR"
FORMAT = 1
# A temporary entry untouched this long was left by a killed run (a live one
# writes its images file continuously).
STALE_SECONDS = 3600


def default_cache_dir():
    """``$CNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnn``, else ``~/.cache/cnn``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cnn")


def cache_key(files, settings):
    """Digest of ``files`` ((relpath, size, mtime_ns) tuples) and ``settings`` (JSON-able)."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "settings": settings},
                                       sort_keys=True).encode())
    for rel, size, mtime in files:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:32]


def load(cache_dir, key):
    """(images memory map, labels, meta) of a complete entry, or None."""
    entry = os.path.join(cache_dir, key)
    try:
        with open(os.path.join(entry, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        images = np.load(os.path.join(entry, "images.npy"), mmap_mode="r")
        labels = np.load(os.path.join(entry, "labels.npy"))
    except (OSError, ValueError):
        return None
    return images, labels, meta


def remove_stale(cache_dir, max_age=STALE_SECONDS):
    """Remove temporary entries that killed runs left; returns how many."""
    removed, now = 0, time.time()
    try:
        names = [n for n in os.listdir(cache_dir) if n.startswith(".") and n.endswith(".tmp")]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(cache_dir, name)
        try:
            newest = max([os.path.getmtime(path)] + [
                os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)])
        except OSError:
            continue
        if now - newest > max_age:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


class Entry:
    """A cache entry being written into a temporary folder, renamed when complete.

    ``need_bytes``: what it will hold; refused up front when the disk has less."""

    def __init__(self, cache_dir, key, need_bytes=0):
        try:
            os.makedirs(cache_dir, exist_ok=True)
            remove_stale(cache_dir)
            free = shutil.disk_usage(cache_dir).free
        except OSError as exc:
            raise DataError(f"cache folder {cache_dir}: {exc.strerror or exc} (choose "
                            f"another with --cache-dir)") from None
        if free < need_bytes:
            raise DataError(f"cache folder {cache_dir} has {free / 2**20:,.0f} MiB free; "
                            f"decoding these images needs {need_bytes / 2**20:,.0f} MiB "
                            f"(choose another with --cache-dir, or a smaller --image-size)")
        self.final = os.path.join(cache_dir, key)
        self.tmp = tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=cache_dir)

    def array(self, name, shape):
        """A new writable uint8 memory map ``name``.npy in the entry."""
        return np.lib.format.open_memmap(os.path.join(self.tmp, name + ".npy"), mode="w+",
                                         dtype=np.uint8, shape=shape)

    def remove(self, name):
        os.unlink(os.path.join(self.tmp, name + ".npy"))

    def commit(self, labels, meta):
        np.save(os.path.join(self.tmp, "labels.npy"), labels)
        with open(os.path.join(self.tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f)
        try:
            os.rename(self.tmp, self.final)
        except OSError:       # another run committed the same entry first: use theirs
            shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
