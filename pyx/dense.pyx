"""dense (fully connected) forward and backward: one GEMM per product.

Layout: x (N, D) and out (N, M) row-major, w (M, D) laid out (out, in) like
conv's (F, C, KH, KW) and PyTorch's Linear, so that

    out (N, M) = x (N, D) @ w.T (D, M) + b       bias rows first, then GEMM with beta = 1
    dx  (N, D) = dout (N, M) @ w (M, D)
    dw  (M, D) = dout.T (M, N) @ x (N, D)        the sum over samples is inside the GEMM
    db  (M,)   = column sums of dout

Parallel axis: there is no batch loop around the GEMMs. Each product is one
big GEMM over the whole batch and OpenBLAS parallelises it internally with
``threads`` threads (threadpoolctl sets its pool for the call); our own OpenMP
loops run before or after a GEMM, never around one, so the two pools never
oversubscribe the cores.

The element-wise parts are OpenMP loops: the bias fill is split over the rows
of out (disjoint per sample). db is a reduction over samples, parallelised over
the M outputs instead: the columns are cut into blocks of DB_BLOCK and each
block belongs to exactly one loop iteration, hence one thread, which walks
every sample row and adds that row's slice into its own columns of a float64
accumulator. No two threads ever write the same column, so there is no race
and no per-thread buffer to merge; reading DB_BLOCK contiguous columns per row
keeps the walk over dout cache-friendly. Each column is summed in sample order
whatever the thread count, so db does not depend on ``threads``.
"""
import numpy as np

from cython.parallel cimport prange

from cnn._checks import check_dense, check_dout
from cnn._blas_threads import blas_threads
from cnn._threads import resolve_threads

include "gemm.pxi"

# Columns of dout per db work item: 64 doubles = 512 bytes of accumulator, so
# neighbouring threads rarely share a cache line and every row read is long.
cdef enum:
    DB_BLOCK = 64


cdef void bias_fill_kernel(const floating[::1] b, floating[:, ::1] out,
                           int loop_threads) noexcept nogil:
    """out[n, :] = b for every row n; GEMM with beta = 1 then adds x @ w.T."""
    cdef Py_ssize_t N = out.shape[0], M = out.shape[1]
    cdef Py_ssize_t n, m
    for n in prange(N, num_threads=loop_threads, schedule="static"):
        for m in range(M):
            out[n, m] = b[m]


cdef void column_sum_kernel(const floating[:, ::1] dout, double[::1] acc,
                            int loop_threads) noexcept nogil:
    """acc[m] = sum_n dout[n, m]; each block of DB_BLOCK columns has one owner."""
    cdef Py_ssize_t N = dout.shape[0], M = dout.shape[1]
    cdef Py_ssize_t blocks = (M + DB_BLOCK - 1) // DB_BLOCK
    cdef Py_ssize_t blk, lo, hi, n, m
    cdef const floating* row
    for blk in prange(blocks, num_threads=loop_threads, schedule="static"):
        lo = blk * DB_BLOCK
        hi = lo + DB_BLOCK
        if hi > M:
            hi = M
        for n in range(N):
            row = &dout[n, 0]
            for m in range(lo, hi):
                acc[m] += row[m]


cdef void dense_forward_kernel(const floating[:, ::1] x, const floating[:, ::1] w,
                               const floating[::1] b, floating[:, ::1] out,
                               int loop_threads) noexcept nogil:
    """out (N, M) = x (N, D) @ w.T (D, M) + b."""
    cdef int N = <int>x.shape[0], D = <int>x.shape[1], M = <int>w.shape[0]
    bias_fill_kernel(b, out, loop_threads)
    gemm_rowmajor(False, True, N, M, D, <floating>1.0, &x[0, 0], D,
                  &w[0, 0], D, <floating>1.0, &out[0, 0], M)


cdef void dense_backward_kernel(const floating[:, ::1] x, const floating[:, ::1] w,
                                const floating[:, ::1] dout, floating[:, ::1] dx,
                                floating[:, ::1] dw, double[::1] db_acc,
                                int loop_threads) noexcept nogil:
    """dx = dout @ w, dw = dout.T @ x (two GEMMs), db_acc = column sums of dout."""
    cdef int N = <int>x.shape[0], D = <int>x.shape[1], M = <int>w.shape[0]
    gemm_rowmajor(False, False, N, D, M, <floating>1.0, &dout[0, 0], M,
                  &w[0, 0], D, <floating>0.0, &dx[0, 0], D)
    gemm_rowmajor(True, False, M, D, N, <floating>1.0, &dout[0, 0], M,
                  &x[0, 0], D, <floating>0.0, &dw[0, 0], D)
    column_sum_kernel(dout, db_acc, loop_threads)


def _check_blas_sizes(*sizes):
    # BLAS takes 32-bit ints; a dimension past that would wrap around.
    if max(sizes) >= 2**31:
        raise ValueError(f"dense matrix dimension {max(sizes)} exceeds the BLAS int limit")


def dense_forward(x, w, b, *, threads=None):
    """Fully connected forward.

    x (N, D), w (M, D) laid out (out, in), b (M,). Returns out (N, M) =
    x @ w.T + b and a cache for dense_backward.
    """
    x, w, b = check_dense(x, w, b)
    N, D = x.shape
    M = w.shape[0]
    _check_blas_sizes(N, D, M)
    total = resolve_threads(threads)
    loop_threads = max(1, min(total, N))
    out = np.empty((N, M), dtype=x.dtype)
    with blas_threads(total):
        if x.dtype == np.float32:
            dense_forward_kernel[float](x, w, b, out, loop_threads)
        else:
            dense_forward_kernel[double](x, w, b, out, loop_threads)
    return out, (x, w, b)


def dense_backward(dout, cache, *, threads=None):
    """Gradients of dense_forward: (dx, dw, db) shaped like (x, w, b)."""
    x, w, b = cache
    # Re-validate the cached arrays: the kernels trust every shape they are given.
    x, w, b = check_dense(x, w, b)
    N, D = x.shape
    M = w.shape[0]
    dout = check_dout(dout, (N, M), x.dtype)
    _check_blas_sizes(N, D, M)
    total = resolve_threads(threads)
    loop_threads = max(1, min(total, (M + DB_BLOCK - 1) // DB_BLOCK))
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    db_acc = np.zeros(M, dtype=np.float64)
    with blas_threads(total):
        if x.dtype == np.float32:
            dense_backward_kernel[float](x, w, dout, dx, dw, db_acc, loop_threads)
        else:
            dense_backward_kernel[double](x, w, dout, dx, dw, db_acc, loop_threads)
    db = db_acc.astype(x.dtype, copy=False)
    return dx, dw, db
