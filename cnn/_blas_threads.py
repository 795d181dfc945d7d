"""Sharing the cores between our OpenMP loops and OpenBLAS's own threads.

A kernel that splits a batch over OpenMP threads and calls GEMM inside the loop
must keep each GEMM single-threaded, or the two thread pools oversubscribe the
cores. With fewer independent items than threads, the loop runs serially and
BLAS gets the threads. threadpoolctl sets OpenBLAS's thread count for the call
and restores the user's setting afterwards.
"""
import contextlib

from threadpoolctl import ThreadpoolController

from cnn._threads import resolve_threads

_controller = None


def _blas():
    global _controller
    if _controller is None:
        # scipy.linalg.cython_blas loads SciPy's OpenBLAS; it must be loaded
        # before the controller scans the process's libraries.
        import scipy.linalg.cython_blas  # noqa: F401
        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def split_threads(threads, items):
    """(loop_threads, gemm_threads) for a loop over ``items`` independent pieces."""
    total = resolve_threads(threads)
    loop = max(1, min(total, items))
    return loop, max(1, total // loop)


def blas_threads(n):
    """Context manager: BLAS calls inside use ``n`` threads."""
    controller = _blas()
    if all(info.get("num_threads") == n for info in controller.info()):
        return contextlib.nullcontext()
    return controller.limit(limits=n)
