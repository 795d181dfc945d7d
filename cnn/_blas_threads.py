"""Keeping OpenBLAS single-threaded inside our OpenMP loops.

The kernels get all their parallelism from OpenMP and call BLAS from inside
their parallel loops, one GEMM per thread. OpenBLAS must then run each call on
the calling thread only: its own worker pool would oversubscribe the cores,
and its workers busy-wait after every call, taking cores from the OpenMP
threads that come next. ``blas_threads(n)`` sets OpenBLAS's thread count for
the duration of a call and restores the user's setting afterwards.

threadpoolctl finds the OpenBLAS libraries loaded in the process (SciPy's,
which scipy.linalg.cython_blas calls, and NumPy's); its per-library
controllers then get and set the thread count with a direct C call, which is
cheap enough for every kernel call (scanning the process's libraries is not,
so that happens once).
"""
import contextlib

from threadpoolctl import ThreadpoolController

from cnn._threads import resolve_threads

_libraries = None


def _blas_libraries():
    global _libraries
    if _libraries is None:
        # scipy.linalg.cython_blas loads SciPy's OpenBLAS; it must be loaded
        # before the controller scans the process's libraries.
        import scipy.linalg.cython_blas  # noqa: F401
        _libraries = [lib for lib in ThreadpoolController().lib_controllers
                      if lib.user_api == "blas"]
    return _libraries


def split_threads(threads, items):
    """(loop_threads, gemm_threads) for a loop over ``items`` independent pieces."""
    total = resolve_threads(threads)
    loop = max(1, min(total, items))
    return loop, max(1, total // loop)


@contextlib.contextmanager
def blas_threads(n):
    """BLAS calls inside the block use ``n`` threads."""
    changed = []
    for lib in _blas_libraries():
        before = lib.get_num_threads()
        if before != n:
            lib.set_num_threads(n)
            changed.append((lib, before))
    try:
        yield
    finally:
        for lib, before in changed:
            lib.set_num_threads(before)


# Multiply-adds below which a second thread's wake-up (microseconds) costs more
# than it saves: about 5 us of single-threaded SGEMM.
GEMM_WORK_PER_THREAD = 1 << 18


def forward_split(threads, images, filters, work_per_filter):
    """(filter_blocks, loop_threads) for a convolution forward pass.

    The work items are (image, block of filters) pairs, each a single-threaded
    GEMM. With at least as many images as threads a block is every filter;
    with fewer (a batch of one at inference) each image's filters are cut into
    blocks so that every thread still gets a GEMM of its own, and OpenBLAS's
    thread pool is never needed. Blocks are not cut thinner than the work is
    worth: each gets at least GEMM_WORK_PER_THREAD multiply-adds.
    """
    total = resolve_threads(threads)
    blocks = 1
    if images < total:
        worth = max(1, (filters * work_per_filter) // GEMM_WORK_PER_THREAD)
        blocks = max(1, min(-(-total // images), filters, worth))
    return blocks, max(1, min(total, images * blocks))
