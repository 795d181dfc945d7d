"""Run CPU work (decoding, parsing, the forward pass) off the event loop.

Under gunicorn's gevent worker (gunicorn.conf.py) every connection of a worker
is a greenlet on one OS thread: a slow client costs a greenlet, not a worker.
Decoding a request's images (up to ~0.7 s of CPU at the pixel budget), parsing
its JSON and the forward pass never yield, so run on that thread they would
freeze every other connection of the worker, /health and gunicorn's heartbeat
included. :func:`run_blocking` hands them to gevent's pool of real threads
instead and lets the loop serve other connections meanwhile (Pillow, NumPy
and the forward kernels of the inference plan, cnn.plan, release the GIL
for their long loops); the greenlet that asked waits cooperatively.

The pool has one thread: the CPU work of a worker's requests runs one piece at
a time, in arrival order, on the worker's share of the cores (more threads
would only compete for them), and one long-lived thread keeps one OpenMP team
instead of a team per short-lived thread. Without gevent (the Flask test
client, ``flask run``, a threaded worker) the call runs where it is.
"""
import contextvars


def _gevent_hub_threadpool():
    try:
        from gevent import monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("socket"):
        return None
    import gevent
    pool = gevent.get_hub().threadpool
    if pool.maxsize != 1:
        pool.maxsize = 1
    return pool


def run_blocking(fn, *args, small=False):
    """``fn(*args)``, in gevent's thread pool when running under gevent, in a
    copy of the caller's context (Flask's request and app contexts are context
    variables; the greenlet waits, so nothing uses them twice at once).

    ``small=True`` runs it where it is, for work known to be cheap (reading a
    .npy body: a header check and a copy). Measured with 32 clients at batch 1
    (benchmarks/serve.py, .npy bodies): handing the body to the thread too cost
    15-20% of the requests per second. The forward pass always goes to the
    thread, even for one image: run on the loop, it let the connection that
    had just been answered go again first (p99 0.5-0.6 s against 0.07 s),
    whereas the thread's queue and the forward-pass lock serve requests in
    arrival order."""
    pool = None if small else _gevent_hub_threadpool()
    if pool is None:
        return fn(*args)
    ok, value = pool.apply(contextvars.copy_context().run, (_outcome, fn, *args))
    if not ok:
        raise value
    return value


def _outcome(fn, *args):
    """(True, result) or (False, exception): an exception is raised again in the
    caller, not in the pool, whose hub would print it as a crash (an ApiError
    for a bad upload is an answer, not a crash)."""
    try:
        return True, fn(*args)
    except Exception as exc:  # noqa: BLE001 - handed to the caller as is
        return False, exc
