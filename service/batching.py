"""Dynamic batching: concurrent predictions of one model in one forward pass.

A gevent worker serves many requests at once, but its forward passes run one
at a time (``ServedModel.lock``, in the worker's CPU thread: service.offload).
While a pass runs, the requests that reach ``predict_proba`` queue up here;
when it ends, the oldest of them runs the next pass for its model, taking
every queued request of that model (in arrival order) up to
``CNN_BATCH_MAX_SIZE`` images, and each request gets its own rows back. So:

* at concurrency 1 nothing waits: a request that finds the worker idle runs
  at once, alone (no timer, no added latency);
* under load a pass takes whatever arrived during the previous one, so
  batches grow with the load and shrink with it, with no tuning
  (MLServer's adaptive batching; Triton's dynamic batcher);
* ``CNN_BATCH_DELAY_US`` (Triton's ``max_queue_delay_microseconds``, default
  0) lets a pass that has queued requests wait until its oldest request has
  waited that long, for more to join, unless the batch is already full;
* requests for different models (or versions) never share a pass; a model's
  requests are served in arrival order, and the oldest queued request of any
  model always runs next, so no model starves;
* a request of more images than ``CNN_BATCH_MAX_SIZE`` (at most
  ``CNN_MAX_IMAGES``) runs alone; merged passes never exceed the limit, which
  bounds a pass's memory as ``CNN_MAX_IMAGES`` does a request's;
* each request's pixels are prepared (checked and normalised,
  ``model.prepare``) on their own before the merge: one bad input fails only
  its own request. If the merged pass raises anyway, every request in it gets
  the same 500 error, the exception is logged once, and the next pass runs.

There is no batching thread: the request that runs a pass is the "leader"
and, when done, hands the role to the oldest queued request (each waiting
request sleeps on its own Event). Under gevent the primitives below are
gevent's, and only greenlets of the event loop touch the queue; without gevent
(the Flask test client, threads) they are real thread primitives.

Measured with benchmarks/serve.py (2 workers, batch-1 PNG requests, a busy
2-core machine, on/off alternated): at concurrency 32, 5.7-6.2 requests per
pass, 1.2-1.7x the requests/s with a p99 no worse, and 15-30% less worker CPU per
request; at concurrency 1 the same p50 (every pass holds one request).

Merged results equal the lone ones to float32 rounding, not bit for bit: BLAS
sums a dense layer's products in an order that depends on the batch's row
count (as it already does for a request of several images).
"""
import collections
import logging
import threading
import time

import numpy as np
from flask import current_app, has_app_context

from cnn.model import softmax
from service.errors import ApiError
from service.offload import run_blocking

log = logging.getLogger(__name__)

EXTENSION = "cnn_batcher"   # key of the worker's Batcher in app.extensions


class _Request:
    __slots__ = ("served", "x", "n", "arrived", "event", "lead", "result", "error")

    def __init__(self, served, x):
        self.served = served
        self.x = x
        self.n = len(x)
        self.arrived = time.monotonic()
        self.event = threading.Event()   # set when done, or when handed the lead
        self.lead = False
        self.result = None
        self.error = None


class Batcher:
    """Merges concurrent ``predict_proba`` calls of one worker (see the module
    docstring). ``on_pass(served, images, requests)`` is called after every
    forward pass (the metrics)."""

    def __init__(self, enabled=True, max_size=64, delay=0.0, on_pass=None):
        self.enabled = enabled
        self.max_size = max_size
        self.delay = delay                    # seconds
        self.on_pass = on_pass
        self._mutex = threading.Lock()
        self._arrived = threading.Condition(self._mutex)
        self._queue = collections.deque()     # waiting requests, every model, oldest first
        self._leading = False                 # a request holds the leader role

    def predict_proba(self, served, x):
        """Class probabilities (N, K) of the raw pixels ``x`` for ``served``."""
        if not self.enabled:
            with served.lock:
                proba = run_blocking(served.plan.predict_proba, x)
            self._passed(served, len(proba), 1)
            return proba
        request = _Request(served, x)
        with self._mutex:
            self._queue.append(request)
            idle = not self._leading
            if idle:
                self._leading = request.lead = True
            else:
                self._arrived.notify_all()    # a leader gathering a batch may be waiting
        if not request.lead:
            self._wait(request)               # until served, or handed the lead
        if request.lead:
            self._lead(request, gather=not idle)
        return self._outcome(request)

    def queued(self):
        """Requests waiting for their pass to start."""
        with self._mutex:
            return len(self._queue)

    # -- followers ------------------------------------------------------------
    def _wait(self, request):
        try:
            request.event.wait()
        except BaseException:   # interrupted (GreenletExit, a timeout): leave the queue
            with self._mutex:
                if request in self._queue:
                    self._queue.remove(request)
                # handed the lead just now: pass it on, or nobody ever runs again
                waking = self._hand_over_locked() if request.lead else None
            if waking is not None:
                waking.event.set()
            raise

    @staticmethod
    def _outcome(request):
        if request.error is not None:
            raise request.error
        return request.result

    # -- the leader -----------------------------------------------------------
    def _lead(self, request, gather):
        batch = []
        try:
            # the batch is taken once the pass may start: what queued meanwhile joins it
            with request.served.lock:
                with self._mutex:
                    if gather and self.delay > 0:
                        self._gather_locked(request)
                    batch = self._take_locked(request)
                self._run(batch)
        finally:
            for r in batch:
                if r.result is None and r.error is None:   # interrupted mid-pass
                    r.error = ApiError(503, "the forward pass was interrupted; retry")
            with self._mutex:
                if not batch:   # interrupted before taking its batch
                    self._queue.remove(request)
                waking = self._hand_over_locked()
            # the next leader first: its pass starts while these answers are written
            if waking is not None:
                waking.event.set()
            for r in batch:
                if r is not request:
                    r.event.set()

    def _gather_locked(self, head):
        """Wait until ``head`` has waited ``delay`` or its batch is full."""
        deadline = head.arrived + self.delay
        while self._queued_images_locked(head.served) < self.max_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.wait(left)

    def _queued_images_locked(self, served):
        return sum(r.n for r in self._queue if r.served is served)

    def _take_locked(self, head):
        """``head`` and the next queued requests of its model, oldest first,
        while their images fit in ``max_size`` (``head`` always); the others
        stay queued in their order."""
        batch, images, rest, full = [head], head.n, collections.deque(), False
        for r in self._queue:
            if r is head:
                continue
            if not full and r.served is head.served:
                if images + r.n <= self.max_size:
                    batch.append(r)
                    images += r.n
                    continue
                full = True   # the model's later requests keep their turn
            rest.append(r)
        self._queue = rest
        return batch

    def _hand_over_locked(self):
        """Give the lead to the oldest queued request (returned: set its event
        outside the mutex), or mark the batcher idle."""
        if self._queue:
            nxt = self._queue[0]
            nxt.lead = True
            return nxt
        self._leading = False
        return None

    def _run(self, batch):
        served = batch[0].served
        try:
            outcomes = run_blocking(_forward, served.plan, [r.x for r in batch])
        except Exception as exc:  # noqa: BLE001 - every request gets the same answer
            log.error("forward pass of model %r failed (%d requests, %d images)",
                      served.name, len(batch), sum(r.n for r in batch), exc_info=exc)
            for r in batch:
                r.error = ApiError(500, f"the forward pass of model {served.name!r} failed "
                                        f"(an internal error; the server log has the "
                                        f"details)")
            return
        for r, (proba, error) in zip(batch, outcomes):
            r.result, r.error = proba, error
        self._passed(served, sum(r.n for r, (_, e) in zip(batch, outcomes) if e is None),
                     sum(e is None for _, e in outcomes))

    def _passed(self, served, images, requests):
        if self.on_pass is not None and requests:
            self.on_pass(served, images, requests)


def _forward(model, xs):
    """[(proba, None) or (None, exception)] for each input of one merged pass
    (runs in the worker's CPU thread); ``model`` is the served model's inference
    plan (cnn.plan), which has the model's predict_proba, prepare and logits. A
    lone input is exactly ``model.predict_proba``; several are prepared one by one (a bad one fails
    alone), concatenated and run as one batch."""
    if len(xs) == 1:
        return [(model.predict_proba(xs[0]), None)]
    prepared, outcomes = [], []
    for x in xs:
        try:
            prepared.append(model.prepare(x))
            outcomes.append(None)
        except Exception as exc:  # noqa: BLE001 - this request's own error
            outcomes.append((None, exc))
    if prepared:
        proba = softmax(model.logits(np.concatenate(prepared)))
        rows = iter(np.split(proba, np.cumsum([len(p) for p in prepared])[:-1]))
        outcomes = [(next(rows), None) if o is None else o for o in outcomes]
    return outcomes


def current_batcher():
    """The batcher of the app handling this request, made on first use from its
    settings; None outside an app context."""
    if not has_app_context():
        return None
    extensions = current_app.extensions
    batcher = extensions.get(EXTENSION)
    if batcher is None:
        config = current_app.config
        max_images = config.get("CNN_MAX_IMAGES", 256)
        max_size = config.get("CNN_BATCH_MAX_SIZE") or min(64, max_images)
        metrics = getattr(extensions.get("cnn"), "metrics", None)
        on_pass = metrics.record_pass if hasattr(metrics, "record_pass") else None
        batcher = extensions.setdefault(EXTENSION, Batcher(
            enabled=config.get("CNN_BATCHING", True), max_size=max_size,
            delay=config.get("CNN_BATCH_DELAY_US", 0) / 1e6, on_pass=on_pass))
    return batcher
