"""Keeping OpenBLAS single-threaded inside our OpenMP loops.

The kernels get all their parallelism from OpenMP and call BLAS from inside
their parallel loops, one GEMM per thread. OpenBLAS must then run each call on
the calling thread only: its own worker pool would oversubscribe the cores,
and its workers busy-wait after every call, taking cores from the OpenMP
threads that come next. ``blas_threads(n)`` sets OpenBLAS's thread count for
the duration of a call and restores the user's setting afterwards.

threadpoolctl finds the OpenBLAS libraries loaded in the process (SciPy's,
which scipy.linalg.cython_blas calls, and NumPy's) once; the thread count is
then read and set through each library's own openblas_get/set_num_threads,
called directly (see _OpenBLAS). Other BLAS libraries go through
threadpoolctl's controllers.
"""
from threadpoolctl import ThreadpoolController

# How many threads a kernel uses is cnn._threads' policy.

_libraries = None


class _OpenBLAS:
    """Direct get/set of one OpenBLAS's thread count through its own C functions.

    threadpoolctl finds the library; its per-call getters and setters look the
    symbols up again on every call (~3 us a call), and since threadpoolctl 3.6
    only the first Python thread that sets a limit may change it, which would
    leave the BLAS threads of a server's request threads unlimited."""
    __slots__ = ("get_num_threads", "set_num_threads")

    def __init__(self, getter, setter):
        self.get_num_threads = getter
        self.set_num_threads = setter


def _direct(lib):
    if getattr(lib, "internal_api", None) != "openblas":
        return lib
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return _OpenBLAS(get, set_)
    return lib


def _blas_libraries():
    global _libraries
    if _libraries is None:
        # scipy.linalg.cython_blas loads SciPy's OpenBLAS; it must be loaded
        # before the controller scans the process's libraries.
        import scipy.linalg.cython_blas  # noqa: F401
        _libraries = [_direct(lib) for lib in ThreadpoolController().lib_controllers
                      if lib.user_api == "blas"]
    return _libraries


class blas_threads:
    """``with blas_threads(n):`` BLAS calls inside the block use ``n`` threads.

    A class rather than a generator context manager: it wraps every kernel
    call, and at batch size 1 its few microseconds showed in the latency.
    """
    __slots__ = ("n", "changed")

    def __init__(self, n):
        self.n = n
        self.changed = None

    def __enter__(self):
        n, changed = self.n, None
        for lib in _libraries if _libraries is not None else _blas_libraries():
            before = lib.get_num_threads()
            if before != n:
                lib.set_num_threads(n)
                changed = (changed or []) + [(lib, before)]
        self.changed = changed
        return self

    def __exit__(self, *exc):
        if self.changed:
            for lib, before in self.changed:
                lib.set_num_threads(before)
        return False
