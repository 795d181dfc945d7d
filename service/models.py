"""The models a worker serves: the weights files of the models folder, kept in step with it.

* Two layouts, side by side in one folder. A flat ``NAME.npz``
  (``models/convnet.npz`` -> ``convnet``) is one version, named by when it was
  saved (its ``saved_at``, as before versions existed). Triton's
  ``NAME/VERSION/model.npz`` (VERSION a positive integer) serves every version
  of NAME at once: requests that name no version get the highest served one,
  ``/v2/models/NAME/versions/V/...`` a given one. Other folder names under
  NAME/ and a version folder without ``model.npz`` (yet) are ignored. When
  ``NAME.npz`` and ``NAME/`` both hold a model, the folder is served and the
  flat file listed as failed. Only ``.npz`` files count: checkpoints
  (``*.ckpt``), training histories (``*.history.json``), plots and hidden files
  (``.*``, e.g. the temporary file of a weights file being written) are not served.
* Hot reload: every ``CNN_RELOAD_INTERVAL`` seconds (2; 0: never) each worker
  looks at the folder (names and ``stat()`` only: size, mtime, inode) and
  loads what was added or replaced, off the event loop, before swapping it in
  (one assignment of a new :class:`_View`): the old file answers until then,
  requests in flight keep the model object they started with, and a file that
  fails to load leaves the old one serving (listed as failed, counted, logged,
  not tried again until it changes). A removed file stops being served. A
  file that changes while it is read (a copy still being written) is read
  again at the next look; writers should still write a temporary file and
  rename it (``cnn.io.atomic_write``, what ``cnn.train`` does).
* Unloaded models: service.repository records in a state file which names
  were unloaded; every worker reads it when it looks at the folder.
* A file that cannot be loaded (corrupt, truncated, not a cnn weights file,
  architecture and weights that do not fit, over ``cnn.io.MAX_BYTES``) is
  logged, counted in the ``cnn_model_load_failures_total`` metric and listed
  by ``/models`` with its error; the other files are still served. Rejecting a
  file costs what its headers declare, not what it would inflate to (see
  ``cnn.io``). Answers name files relative to the models folder, never by
  the server's paths; the log has the full paths.
* The default model is ``CNN_DEFAULT_MODEL`` when set; otherwise the
  alphabetically first loaded model. Alphabetical order (not modification
  time) is chosen so that every worker and every replica picks the same model
  from the same folder. When ``CNN_DEFAULT_MODEL`` names a model that did not
  load, requests that name no model get 503 and the service is not ready:
  silently answering with another model would be worse.
* Each process loads its own copy (gunicorn workers call ``create_app`` after
  the fork), with ``CNN_THREADS`` kernel threads and the ``CNN_BACKEND`` kernels.

Thread safety and the thread budget: a model's layers keep the cache of their
last forward pass, so two requests running the same model at once (greenlets
of the gevent worker, or threads under a threaded server) would overwrite
each other's intermediate arrays. Every forward pass therefore holds a lock
(:meth:`ServedModel.predict_proba`), handed out in arrival order
(:class:`FifoLock`). The lock is shared by all the models of a worker, not one
per model: each forward pass already runs ``CNN_THREADS`` kernel threads, so
two at once (two models) would put 2 x ``CNN_THREADS`` threads on the
worker's share of the cores, and the kernels set OpenBLAS's process-wide
thread count around their GEMM calls, which concurrent passes would race on.
Under gevent the pass itself runs in the worker's CPU thread
(service.offload), so the event loop keeps reading other requests and
writing answers meanwhile.
"""
import collections
import fcntl
import hashlib
import json
import os
import threading
import weakref

from cnn.images import upload_policy
from cnn.io import ModelFileError, atomic_write, load_model
from service.errors import ApiError
from service.fifo_lock import FifoLock
from service.model_folder import (
    STATE_FILE,
    STATE_LOCK,
    file_signature,
    model_order,
    read_state_file,
    scan_folder,
)
from service.offload import run_blocking


class ServedModel:
    """A loaded model with its lock and the facts the API reports about it."""

    def __init__(self, name, path, model, lock=None, version=None, file=None):
        self.name = name
        self.path = path
        self.file = self.key = file or os.path.basename(path)   # relative to the folder
        self.model = model
        # What the forward passes run: the model prepared once (cnn.plan), whose
        # answers never depend on an earlier call. A served model never changes,
        # so the plan uses its arrays instead of a second copy of every weight.
        self.plan = model.compile(copy=False)
        self.lock = lock if lock is not None else threading.Lock()
        meta = model.meta or {}
        self.meta = meta
        self.saved_at = meta.get("saved_at")
        self.format_version = meta.get("version")
        # NAME/VERSION/model.npz: the folder's number; a flat NAME.npz: when it was saved
        self.version = version or str(self.saved_at or f"format-{self.format_version}")
        self.input_shape = tuple(model.input_shape)
        self.uploads = upload_policy(model)   # how image files become its input
        self.num_classes = int(model.num_classes)
        names = model.class_names or [str(k) for k in range(self.num_classes)]
        self.class_names = [str(n) for n in names]
        self.summary = dict(getattr(model, "summary_info", None) or {})
        self.num_params = model.num_params()
        self.size_bytes = os.path.getsize(path)
        self.sha256 = _sha256(path)

    def predict_proba(self, x):
        """Class probabilities (N, K) of raw pixels, one forward pass at a time
        (off the event loop under gevent: service.offload). In a request,
        concurrent calls for this model share a pass (service.batching)."""
        from service.batching import current_batcher  # (this method is its one user)
        batcher = current_batcher()
        if batcher is not None:
            return batcher.predict_proba(self, x)
        with self.lock:
            return run_blocking(self.plan.predict_proba, x)

    def describe(self, default=False):
        arch = self.meta.get("architecture") or {}
        return {
            "name": self.name,
            "file": self.file,
            "default": default,
            "version": self.version,
            "format_version": self.format_version,
            "saved_at": self.saved_at,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "input_shape": list(self.input_shape),
            "input": self.uploads.describe(),
            "num_classes": self.num_classes,
            "classes": self.class_names,
            "architecture": {"name": self.summary.get("arch") or arch.get("name"),
                             "layers": arch.get("layers")},
            "parameters": self.num_params,
            "test_accuracy": self.summary.get("test_accuracy"),
            "trained_at": self.summary.get("trained_at") or self.saved_at,
            "normalization": self.model.normalization,
            "backend": self.model.backend,
            "threads": self.model.threads,
            "summary": self.summary,
        }


class FailedModel:
    """A weights file that is not served, and why (``file``: relative to the folder)."""

    def __init__(self, name, file, error, version=None):
        self.name = name
        self.file = self.key = file
        self.error = error
        self.version = version

    def describe(self):
        return {"name": self.name, "file": self.file, "error": self.error}


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _View:
    """What a worker serves at one moment. A new view replaces the old one whole
    (one attribute assignment), so a request reads a consistent set of models
    and keeps the ServedModel it got while a newer view takes its place."""

    def __init__(self, loaded=(), failed=(), candidates=(), unloaded=frozenset(),
                 folder_error=None):
        self.by_key = {m.key: m for m in sorted(loaded, key=model_order)}
        self.versions = {}     # name -> {version: ServedModel}, versions ascending
        for served in self.by_key.values():
            self.versions.setdefault(served.name, {})[served.version] = served
        self.models = {name: list(v.values())[-1]         # the highest version
                       for name, v in sorted(self.versions.items())}
        self.failed = {f.key: f for f in sorted(failed, key=model_order)}
        self.candidates = {c.key: c for c in candidates}
        self.unloaded = unloaded
        self.folder_error = folder_error


class ModelRegistry:
    """The models of one worker, kept in step with the models folder.

    ``refresh()`` compares the folder with what is served and loads what was
    added or replaced (off the event loop), then publishes the new set at once;
    ``start_polling(interval)`` calls it every ``interval`` seconds in a
    background thread (a greenlet under gevent)."""

    def __init__(self, directory, default=None, backend=None, threads=None, logger=None,
                 on_failure=None, max_bytes=None, on_change=None, state_dir=None):
        self.directory = directory
        self.max_bytes = max_bytes   # per weights file; None: cnn.io.MAX_BYTES
        self.configured_default = default
        self.backend = backend
        self.threads = threads
        self.logger = logger
        self.on_failure = on_failure or (lambda name: None)
        # on_change(name, change, served_count) after start: added, replaced, removed, unloaded
        self.on_change = on_change or (lambda name, change, count: None)
        self.lock = FifoLock()  # one forward pass at a time in this process, in arrival order
        self.state_path = os.path.join(state_dir or directory, STATE_FILE)
        self.reload_interval = 0
        self._loaded = {}        # key -> (signature, ServedModel)
        self._failed = {}        # key -> (signature, FailedModel)
        self._unloaded = frozenset()
        self._state_signature = None
        self._last_problem = None
        self._view = _View()
        self._refresh_lock = threading.Lock()   # one refresh at a time (poller, /load)
        self._stop = threading.Event()

    models = property(lambda self: self._view.models, doc="name -> ServedModel (highest "
                                                          "version), sorted by name")
    failed = property(lambda self: self._view.failed, doc="key -> FailedModel")
    folder_error = property(lambda self: self._view.folder_error)

    # -- loading --------------------------------------------------------------
    def load(self):
        """The first look at the folder, in the calling thread (at start)."""
        self.refresh(initial=True)
        if not self.models:
            self._log("error", "no model could be loaded from %r: the service is not ready",
                      self.directory)
        elif self.configured_default and self.configured_default not in self.models:
            self._log("error", "CNN_DEFAULT_MODEL=%r is not loaded (loaded: %s): the "
                      "service is not ready", self.configured_default,
                      ", ".join(self.models))
        return self

    def refresh(self, initial=False, retry=()):
        """Bring the served models in step with the folder and the state file.

        A new or changed file is loaded before it is swapped in: until then the
        old one answers, and if it fails the old one keeps answering (the
        failure is listed). A file that failed is tried again once it changes,
        or when its name is in ``retry`` (an explicit load)."""
        with self._refresh_lock:
            unloaded = self._read_state()
            try:
                candidates, conflicts, unreadable = scan_folder(self.directory)
            except OSError as exc:
                problem = f"cannot read the models folder: {exc.strerror or exc}"
                if problem != self._last_problem:
                    self._log("error", "cannot read the models folder %r: %s%s",
                              self.directory, exc.strerror or exc,
                              "" if initial or not self._loaded else
                              " (serving the models already loaded)")
                self._last_problem = problem
                if initial or not self._loaded:
                    self._view = _View(folder_error=problem, unloaded=unloaded)
                return
            self._last_problem = None
            loaded, failed, changes = {}, {}, []
            for c in candidates:
                if c.name in unloaded:
                    continue
                old = self._loaded.get(c.key)
                if old is not None:
                    loaded[c.key] = old      # serves until its successor is loaded
                    if old[0] == c.signature:
                        continue
                known = self._failed.get(c.key)
                if known is not None and known[0] == c.signature and c.name not in retry:
                    failed[c.key] = known
                    continue
                outcome = self._read_candidate(c) if initial else run_blocking(
                    self._read_candidate, c)
                if outcome is None:          # changed while being read: next time
                    continue
                served, error = outcome
                if served is not None:
                    loaded[c.key] = (c.signature, served)
                    failed.pop(c.key, None)
                    changes.append((served, "replaced" if old else "added"))
                else:
                    if old is not None:
                        error += "; the previous file is still served"
                    failed[c.key] = (c.signature, self._fail(c.name, c.key, error, c.version))
            for key, name, error in conflicts:
                known = self._failed.get(key)
                failed[key] = known if known is not None and known[1].error == error else (
                    None, self._fail(name, key, error))
            for key, (signature, served) in self._loaded.items():
                if key in loaded:
                    continue
                if served.name in unreadable:
                    loaded[key] = (signature, served)
                else:
                    changes.append((served, "unloaded" if served.name in unloaded
                                    else "removed"))
            for key, known in self._failed.items():
                if key not in failed and known[1].name in unreadable:
                    failed[key] = known
            self._loaded, self._failed, self._unloaded = loaded, failed, unloaded
            self._view = _View([s for _, s in loaded.values()],
                               [f for _, f in failed.values()], candidates, unloaded)
            count = len(loaded)
            for served, change in changes if not initial else ():
                self._log("info", "model %r version %s: %s (%s)", served.name,
                          served.version, change, served.file)
                self.on_change(served.name, change, count)

    def _read_candidate(self, c):
        """(ServedModel, None) or (None, error); None when the file changed while
        it was read (a copy still being written: looked at again next time)."""
        try:
            model = load_model(c.path, backend=self.backend, threads=self.threads,
                               max_bytes=self.max_bytes)
            outcome = (ServedModel(c.name, c.path, model, self.lock, version=c.version,
                                   file=c.key), None)
        except ModelFileError as exc:
            outcome = (None, f"{c.key}: {exc.problem}")
        except Exception:  # noqa: BLE001 - one bad file must not stop the rest
            if self.logger is not None:
                self.logger.exception("unexpected error loading %s", c.path)
            outcome = (None, f"{c.key}: could not be loaded (an unexpected error; the "
                             f"server log has the details)")
        try:
            if file_signature(os.stat(c.path)) != c.signature:
                return None
        except OSError:
            return None
        if outcome[0] is not None:
            served = outcome[0]
            self._log("info", "loaded model %r version %s from %s (%d parameters, backend "
                      "%s, %s threads)", c.name, served.version, c.path, served.num_params,
                      served.model.backend, self.threads)
        return outcome

    def _read_state(self):
        """The names unloaded through the repository API (service.repository),
        re-read when the state file changed; a broken file is logged and the
        last good state kept."""
        try:
            signature = file_signature(os.stat(self.state_path))
        except FileNotFoundError:
            self._state_signature = None
            return frozenset()
        except OSError as exc:
            signature = exc.strerror
        if signature == self._state_signature:
            return self._unloaded
        self._state_signature = signature
        try:
            return read_state_file(self.state_path)
        except (OSError, ValueError) as exc:
            self._log("error", "ignoring the model repository state file %s: %s",
                      self.state_path, getattr(exc, "strerror", None) or exc)
            return self._unloaded

    def set_unloaded(self, name, unloaded):
        """Record in the state file, for every worker, that ``name`` is (or is no
        longer) unloaded; then refresh this worker. OSError if the file cannot
        be written. The state file is locked while it is read and rewritten, so
        two workers changing it at once both count."""
        folder = os.path.dirname(self.state_path) or "."
        with open(os.path.join(folder, STATE_LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)    # released when the file is closed
            try:
                names = set(read_state_file(self.state_path))
            except (FileNotFoundError, ValueError):
                names = set()
            if (name in names) != unloaded:
                (names.add if unloaded else names.discard)(name)
                text = json.dumps({"unloaded": sorted(names)}, indent=1) + "\n"
                atomic_write(self.state_path, lambda f: f.write(text.encode()))
        self._state_signature = None   # read it again even if its stat looks the same

    def _fail(self, name, key, error, version=None):
        failure = FailedModel(name, key, error, version)
        self._log("error", "cannot load model %r from %s: %s", name,
                  os.path.join(self.directory, key), error)
        self.on_failure(name)
        return failure

    def _log(self, level, msg, *args):
        if self.logger is not None:
            getattr(self.logger, level)(msg, *args)

    # -- polling --------------------------------------------------------------
    def start_polling(self, interval):
        """Call refresh() every ``interval`` seconds (0: never) in a daemon thread
        (a greenlet under gevent's monkey-patching). The thread holds only a weak
        reference: it ends with the registry (tests make many apps) or close()."""
        self.reload_interval = interval
        if interval <= 0:
            return
        ref, stop, logger = weakref.ref(self), self._stop, self.logger

        def poll():
            while not stop.wait(interval):
                registry = ref()
                if registry is None:
                    return
                try:
                    registry.refresh()
                except Exception:  # noqa: BLE001 - the next look may succeed
                    if logger is not None:
                        logger.exception("looking at the models folder failed")
                del registry

        threading.Thread(target=poll, name="cnn-model-poller", daemon=True).start()

    def close(self):
        self._stop.set()

    # -- queries --------------------------------------------------------------
    @property
    def default_name(self):
        if self.configured_default:
            return self.configured_default
        return next(iter(self.models), None)

    def not_ready_reason(self):
        """Why the service cannot serve its default model, or None when it can."""
        view = self._view
        if not view.models:
            if view.folder_error:
                where = view.folder_error
            elif any(c.name in view.unloaded for c in view.candidates.values()):
                where = ("the models of the folder are unloaded (POST "
                         "/v2/repository/models/NAME/load serves one again)")
            else:
                where = "no loadable *.npz weights file in the models folder"
            return f"no model is loaded: {where}"
        if self.configured_default not in (None, *view.models):
            return self.why_not_served(self.configured_default, "CNN_DEFAULT_MODEL ")
        return None

    def why_not_served(self, name, what="", version=None):
        """Why ``name`` is not served: unloaded, failed to load, or not in the folder."""
        view = self._view
        if name in view.unloaded:
            return (f"{what}model {name!r} is unloaded (POST /v2/repository/models/{name}/"
                    f"load serves it again)")
        failures = [f for f in view.failed.values() if f.name == name
                    and (version is None or f.version == version)]
        if failures:
            return f"{what}model {name!r} failed to load: {failures[-1].error}"
        return f"{what}model {name!r} is not in the models folder"

    def get(self, name=None, version=None):
        """The ServedModel called ``name`` (None: the default) at ``version``
        (None: the highest served), or raise ApiError 404 (unknown name or
        version) / 503 (known but not loaded or unloaded, or no model at all)."""
        view = self._view
        if name is None:
            reason = self.not_ready_reason()
            if reason:
                raise ApiError(503, reason)
            name = self.default_name
        versions = view.versions.get(name)
        if versions is not None:
            if version is None:
                return view.models[name]
            if version in versions:
                return versions[version]
            if any(f.name == name and f.version == version for f in view.failed.values()):
                raise ApiError(503, self.why_not_served(name, version=version))
            raise ApiError(404, f"model {name!r} has no version {version!r} (served "
                                f"version{'s' if len(versions) > 1 else ''}: "
                                f"{', '.join(map(repr, versions))})")
        if name in view.unloaded and any(c.name == name for c in view.candidates.values()) \
                or any(f.name == name for f in view.failed.values()):
            raise ApiError(503, self.why_not_served(name))
        raise ApiError(404, f"unknown model {name!r}", available=list(view.models))

    @property
    def served_count(self):
        """How many model versions are served."""
        return len(self._view.by_key)

    def versions(self, name):
        """The served versions of ``name``, lowest first."""
        return list(self._view.versions.get(name, ()))

    def in_folder(self, name):
        """Whether the last look at the folder found weights files for ``name``."""
        view = self._view
        return any(c.name == name for c in view.candidates.values()) or any(
            f.name == name for f in view.failed.values())

    def describe(self):
        view = self._view
        default = self.default_name
        return {"default": default,
                "models": [m.describe(default=(m.name == default
                                               and m is view.models[m.name]))
                           for m in view.by_key.values()],
                "failed": [f.describe() for f in view.failed.values()]}

    def index(self, ready_only=False):
        """Triton's repository index: every model version of the folder with its
        state (READY, UNAVAILABLE) and, when not ready, the reason."""
        view = self._view
        entries = {}
        for c in view.candidates.values():
            entries[c.key] = {"name": c.name, "version": c.version, "state": "UNAVAILABLE",
                              "reason": "unloaded" if c.name in view.unloaded
                              else "not loaded yet"}
        for key, f in view.failed.items():
            entries[key] = {"name": f.name, "version": f.version, "state": "UNAVAILABLE",
                            "reason": f.error}
        for key, served in view.by_key.items():
            entry = {"name": served.name, "version": served.version, "state": "READY"}
            if key in view.failed:      # a newer file failed, this one still answers
                entry["reason"] = view.failed[key].error
            entries[key] = entry
        rows = []
        for key in sorted(entries, key=lambda k: model_order(_Keyed(k, **entries[k]))):
            entry = {k: v for k, v in entries[key].items() if v is not None}
            if not ready_only or entry["state"] == "READY":
                rows.append(entry)
        return rows


_Keyed = collections.namedtuple("_Keyed", "key name version state reason",
                                defaults=(None,))
