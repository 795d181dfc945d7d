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

import numpy as np

CACHE_ENV = "CNN_CACHE_DIR"
FORMAT = 1


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


class Entry:
    """A cache entry being written: ``images`` is a writable memory map."""

    def __init__(self, cache_dir, key):
        os.makedirs(cache_dir, exist_ok=True)
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
