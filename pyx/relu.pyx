"""ReLU forward and backward on the flat array, parallel over fixed-size chunks.

Layout: any shape; the kernels see the C-contiguous array as 1-D. The
elements are cut into chunks of CHUNK (the last may be shorter) and the
chunks are split statically over the threads; each element of out / dx is
written by exactly one thread, and nothing is reduced, so there are no races.
The chunk body is a plain loop over raw pointers that the compiler vectorises.

    out = max(x, 0)                 x < 0 ? 0 : x, so a NaN propagates (np.maximum)
    dx  = dout where x > 0 else 0   the cache is x itself

ReLU is memory-bound: threads only pay off on large arrays, so each thread
gets at least cnn._threads.RELU_WORK_PER_THREAD elements.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from cnn._checks import check_dout, check_elementwise
from cnn._threads import RELU_WORK_PER_THREAD, threads_for

cdef Py_ssize_t CHUNK = 16384


cdef inline void relu_chunk(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = x[i]
        out[i] = 0 if v < 0 else v


cdef inline void relu_backward_chunk(const floating* x, const floating* dout, floating* dx,
                                     Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g
    for i in range(n):
        g = dout[i]  # loaded unconditionally, so the select compiles branch-free
        dx[i] = g if x[i] > 0 else 0


cdef void relu_forward_kernel(const floating[::1] x, floating[::1] out,
                              int threads) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, start
    for c in prange(chunks, num_threads=threads, schedule="static"):
        start = c * CHUNK
        relu_chunk(&x[start], &out[start], min(CHUNK, n - start))


cdef void relu_backward_kernel(const floating[::1] x, const floating[::1] dout,
                               floating[::1] dx, int threads) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, start
    for c in prange(chunks, num_threads=threads, schedule="static"):
        start = c * CHUNK
        relu_backward_chunk(&x[start], &dout[start], &dx[start], min(CHUNK, n - start))


def _loop_threads(threads, size):
    """Threads for ``size`` elements (cnn._threads' policy)."""
    return threads_for(threads, size, RELU_WORK_PER_THREAD)


def relu_forward(x, *, threads=None):
    """ReLU forward: out = max(x, 0) for x of any shape, and the cache (x)."""
    x = check_elementwise(x)
    nt = _loop_threads(threads, x.size)
    out = np.empty_like(x)
    if x.dtype == np.float32:
        relu_forward_kernel[float](x.reshape(-1), out.reshape(-1), nt)
    else:
        relu_forward_kernel[double](x.reshape(-1), out.reshape(-1), nt)
    return out, x


def relu_backward(dout, cache, *, threads=None):
    """Gradient of relu_forward: dx = dout where x > 0, else 0."""
    # Re-validate the cache: the kernel trusts every shape it is given.
    x = check_elementwise(cache)
    dout = check_dout(dout, x.shape, x.dtype)
    nt = _loop_threads(threads, x.size)
    dx = np.empty_like(x)
    if x.dtype == np.float32:
        relu_backward_kernel[float](x.reshape(-1), dout.reshape(-1), dx.reshape(-1), nt)
    else:
        relu_backward_kernel[double](x.reshape(-1), dout.reshape(-1), dx.reshape(-1), nt)
    return dx
