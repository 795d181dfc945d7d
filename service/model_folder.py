"""The models folder as files: which weights files it holds (flat ``NAME.npz``
and Triton's ``NAME/VERSION/model.npz``), read from names and ``stat()`` only
so that every worker can look again every few seconds, and the repository
state file (which models were unloaded) that carries load/unload to every
worker. :mod:`service.models` turns what is found here into served models."""
import collections
import json
import os
import re
import stat

VERSION_FOLDER = re.compile(r"[1-9][0-9]{0,17}")   # Triton's: a positive integer
VERSIONED_FILE = "model.npz"
STATE_FILE = ".cnn-repository.json"                # hidden: never taken for a model
STATE_LOCK = ".cnn-repository.lock"
MAX_STATE_BYTES = 1 << 20

# One weights file of the folder. key: the file relative to the models folder
# ("tiny.npz", "digits/2/model.npz"), which names it in answers and logs;
# version: the VERSION folder's name, None for a flat NAME.npz.
Candidate = collections.namedtuple("Candidate", "key name version path signature")


def file_signature(st):
    """What tells that a file changed: a new inode (the atomic rename cnn.train
    does) or a rewrite in place (size, mtime, ctime)."""
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def scan_folder(directory):
    """(candidates, conflicts, unreadable) of the models folder, from names and
    stat() only (cheap enough to repeat every few seconds).

    conflicts: (key, name, error) of files that cannot be served under their
    name; unreadable: names whose version folder could not be listed (what they
    serve is kept). Raises OSError when the folder itself cannot be read."""
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    candidates, conflicts, unreadable, flat = [], [], set(), []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                versions = _scan_versions(entry.name, entry.path)
                candidates.extend(versions)
                continue
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() == ".npz" and stem and entry.is_file():
                flat.append((stem, entry, file_signature(entry.stat())))
        except OSError:   # keep what this name serves until it can be read again
            unreadable.update((entry.name, os.path.splitext(entry.name)[0]))
    names = {c.name for c in candidates}
    for stem, entry, signature in flat:
        if stem in names:
            versioned = any(c.name == stem and c.version for c in candidates)
            conflicts.append((entry.name, stem,
                              f"{entry.name}: model {stem!r} is served from the folder "
                              f"{stem}/ (its versions); remove one of the two"
                              if versioned else
                              f"another weights file is already served as {stem!r}"))
            continue
        names.add(stem)
        candidates.append(Candidate(entry.name, stem, None, entry.path, signature))
    candidates.sort(key=model_order)
    return candidates, conflicts, unreadable


def _scan_versions(name, folder):
    """The NAME/VERSION/model.npz files of one model folder (a version folder
    without model.npz is not a version yet: it may be being filled)."""
    found = []
    with os.scandir(folder) as it:
        for entry in it:
            if not VERSION_FOLDER.fullmatch(entry.name):
                continue
            path = os.path.join(entry.path, VERSIONED_FILE)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(Candidate(f"{name}/{entry.name}/{VERSIONED_FILE}", name,
                                       entry.name, path, file_signature(st)))
    return found


def model_order(item):
    """Sort key of candidates, served and failed models: name, then version by value."""
    version = item.version
    return (item.name, int(version) if version and version.isdigit() else 0, item.key)


def read_state_file(path):
    """The set of model names the state file says are unloaded; FileNotFoundError
    when there is none, ValueError when it is not one the service wrote."""
    with open(path, "rb") as f:
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
    try:
        state = json.loads(data)
    except ValueError:
        raise ValueError("not JSON") from None
    unloaded = state.get("unloaded") if isinstance(state, dict) else None
    if not isinstance(unloaded, list) or not all(isinstance(n, str) for n in unloaded):
        raise ValueError('not {"unloaded": [model names]}')
    return frozenset(unloaded)
