"""The models a worker serves: every ``*.npz`` weights file in the models folder.

* A model's name is its file stem (``models/convnet.npz`` -> ``convnet``).
  Only ``.npz`` files count: checkpoints (``*.ckpt``), training histories
  (``*.history.json``), plots and hidden files (``.*``, e.g. the temporary file
  of a weights file being written) are not served.
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
import hashlib
import os
import threading

from cnn.images import upload_policy
from cnn.io import ModelFileError, load_model
from service.errors import ApiError
from service.offload import run_blocking


class FifoLock:
    """A lock that waiters get in the order they asked for it.

    Neither threading.Lock nor gevent's lock (what threading.Lock is under the
    gevent worker) promises an order: a request that arrives while the lock is
    free between two holders takes it ahead of those already waiting. Under
    32 concurrent batch-64 clients that made p50 20 ms but p99 1.1-2.0 s
    (benchmarks/serve.py); handing the lock straight to the oldest waiter
    keeps the wait of every request near the queue's length.
    """

    def __init__(self):
        self._mutex = threading.Lock()
        self._waiters = collections.deque()
        self._held = False

    def acquire(self):
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            turn.acquire()   # released by release(): the lock is handed over, still held
        except BaseException:   # interrupted while waiting (a timeout, GreenletExit)
            with self._mutex:
                if turn in self._waiters:
                    self._waiters.remove(turn)
                else:             # handed over just now: pass it on, or nobody gets it
                    self._release_locked()
            raise
        return True

    def release(self):
        with self._mutex:
            self._release_locked()

    def _release_locked(self):
        if self._waiters:
            self._waiters.popleft().release()
        elif self._held:
            self._held = False
        else:
            raise RuntimeError("release of an unlocked FifoLock")

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class ServedModel:
    """A loaded model with its lock and the facts the API reports about it."""

    def __init__(self, name, path, model, lock=None):
        self.name = name
        self.path = path
        self.file = os.path.basename(path)
        self.model = model
        self.lock = lock if lock is not None else threading.Lock()
        meta = model.meta or {}
        self.meta = meta
        self.saved_at = meta.get("saved_at")
        self.format_version = meta.get("version")
        self.version = str(self.saved_at or f"format-{self.format_version}")
        self.input_shape = tuple(model.input_shape)
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
        from service.batching import current_batcher   # (this method is its one user)
        batcher = current_batcher()
        if batcher is not None:
            return batcher.predict_proba(self, x)
        with self.lock:
            return run_blocking(self.model.predict_proba, x)

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
            "input": upload_policy(self.model).describe(),
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
    def __init__(self, name, path, error):
        self.name = name
        self.path = path
        self.file = os.path.basename(path)
        self.error = error

    def describe(self):
        return {"name": self.name, "file": self.file, "error": self.error}


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelRegistry:
    def __init__(self, directory, default=None, backend=None, threads=None, logger=None,
                 on_failure=None, max_bytes=None):
        self.directory = directory
        self.max_bytes = max_bytes   # per weights file; None: cnn.io.MAX_BYTES
        self.configured_default = default
        self.backend = backend
        self.threads = threads
        self.logger = logger
        self.on_failure = on_failure or (lambda name: None)
        self.lock = FifoLock()  # one forward pass at a time in this process, in arrival order
        self.models = {}     # name -> ServedModel, sorted by name
        self.failed = {}     # name -> FailedModel
        self.folder_error = None

    # -- loading --------------------------------------------------------------
    def load(self):
        try:
            entries = sorted(os.listdir(self.directory))
        except OSError as exc:
            self.folder_error = f"cannot read the models folder: {exc.strerror or exc}"
            self._log("error", "cannot read the models folder %r: %s", self.directory,
                      exc.strerror or exc)
            return self
        for entry in entries:
            stem, ext = os.path.splitext(entry)
            if ext.lower() != ".npz" or entry.startswith(".") or not stem:
                continue
            path = os.path.join(self.directory, entry)
            if not os.path.isfile(path):
                continue
            if stem in self.models or stem in self.failed:
                self._fail(stem, path, f"another weights file is already served as {stem!r}")
                continue
            try:
                model = load_model(path, backend=self.backend, threads=self.threads,
                                   max_bytes=self.max_bytes)
                served = ServedModel(stem, path, model, self.lock)
            except ModelFileError as exc:
                self._fail(stem, path, f"{entry}: {exc.problem}")
            except Exception:  # noqa: BLE001 - one bad file must not stop the rest
                if self.logger is not None:
                    self.logger.exception("unexpected error loading %s", path)
                self._fail(stem, path, f"{entry}: could not be loaded (an unexpected "
                                       f"error; the server log has the details)")
            else:
                self.models[stem] = served
                self._log("info", "loaded model %r from %s (%s, %d parameters, backend %s, "
                          "%s threads)", stem, path, served.version, served.num_params,
                          model.backend, self.threads)
        if not self.models:
            self._log("error", "no model could be loaded from %r: the service is not ready",
                      self.directory)
        elif self.configured_default and self.configured_default not in self.models:
            self._log("error", "CNN_DEFAULT_MODEL=%r is not loaded (loaded: %s): the "
                      "service is not ready", self.configured_default,
                      ", ".join(self.models))
        return self

    def _fail(self, name, path, error):
        key = name if name not in self.failed and name not in self.models else path
        self.failed[key] = FailedModel(name, path, error)
        self._log("error", "cannot load model %r from %s: %s", name, path, error)
        self.on_failure(name)

    def _log(self, level, msg, *args):
        if self.logger is not None:
            getattr(self.logger, level)(msg, *args)

    # -- queries --------------------------------------------------------------
    @property
    def default_name(self):
        if self.configured_default:
            return self.configured_default
        return next(iter(self.models), None)

    def not_ready_reason(self):
        """Why the service cannot serve its default model, or None when it can."""
        if not self.models:
            where = self.folder_error or "no loadable *.npz weights file in the models " \
                                         "folder"
            return f"no model is loaded: {where}"
        if self.configured_default not in (None, *self.models):
            return self._missing(self.configured_default, "CNN_DEFAULT_MODEL ")
        return None

    def _missing(self, name, what=""):
        failures = [f for f in self.failed.values() if f.name == name]
        if failures:
            return f"{what}model {name!r} failed to load: {failures[0].error}"
        return f"{what}model {name!r} is not in the models folder"

    def get(self, name=None):
        """The ServedModel called ``name`` (None: the default), or raise ApiError
        404 (unknown name) / 503 (known but not loaded, or no model at all)."""
        if name is None:
            reason = self.not_ready_reason()
            if reason:
                raise ApiError(503, reason)
            return self.models[self.default_name]
        if name in self.models:
            return self.models[name]
        if any(f.name == name for f in self.failed.values()):
            raise ApiError(503, self._missing(name))
        raise ApiError(404, f"unknown model {name!r}", available=list(self.models))

    def describe(self):
        default = self.default_name
        return {"default": default,
                "models": [m.describe(default=(m.name == default))
                           for m in self.models.values()],
                "failed": [f.describe() for f in self.failed.values()]}
