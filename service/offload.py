"""Run a forward pass off the event loop when the worker has one.

Under gunicorn's gevent worker (gunicorn.conf.py) every connection of a worker
is a greenlet on one OS thread: a slow client costs a greenlet, not a worker.
A forward pass is CPU work in C that never yields, so run on that thread it
would freeze every other connection of the worker for its duration (tens of
milliseconds for a batch of 256). :func:`run_blocking` hands it to gevent's
pool of real threads instead and lets the loop serve ``/health``, other
uploads and answers meanwhile; the greenlet that asked waits cooperatively.

The pool has one thread: forward passes of a worker run one at a time anyway
(service.models' lock), and one long-lived thread keeps one OpenMP team
instead of a team per short-lived thread. Without gevent (the Flask test
client, ``flask run``, a threaded worker) the call runs where it is.
"""


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


def run_blocking(fn, *args):
    """``fn(*args)``, in gevent's thread pool when running under gevent."""
    pool = _gevent_hub_threadpool()
    if pool is None:
        return fn(*args)
    return pool.apply(fn, args)
