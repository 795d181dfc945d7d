"""dense (fully connected) forward and backward: one GEMM per product.

Layout: x (N, D) and out (N, M) row-major, w (M, D) laid out (out, in) like
conv's (F, C, KH, KW) and PyTorch's Linear, so that

    out (N, M) = x (N, D) @ w.T (D, M) + b       bias rows first, then GEMM with beta = 1
    dx  (N, D) = dout (N, M) @ w (M, D)
    dw  (M, D) = dout.T (M, N) @ x (N, D)        the sum over samples is inside the GEMM
    db  (M,)   = column sums of dout

Parallel axis: each GEMM is cut into column blocks that OpenMP threads compute
with single-threaded BLAS calls: out by blocks of the M outputs, dx and dw by
blocks of the D inputs. The blocks are disjoint slices of out/dx/dw, so no two
threads write the same element, and the sums over samples stay inside each
GEMM. One pool of threads does everything: OpenBLAS's own workers busy-wait
after a call and would take the cores from the OpenMP loops that follow (a
64x3136x128 forward measured 6 ms that way, under 1 ms this way). Products too
small to be worth a second thread run on one.

Each forward thread fills its block of out with the bias before its GEMM adds
x @ w.T (beta = 1). db is a reduction over samples, parallelised over
the M outputs instead: the columns are cut into blocks of DB_BLOCK and each
block belongs to exactly one loop iteration, hence one thread, which walks
every sample row and adds that row's slice into its own columns of a float64
accumulator. No two threads ever write the same column, so there is no race
and no per-thread buffer to merge; reading DB_BLOCK contiguous columns per row
keeps the walk over dout cache-friendly. Each column is summed in sample order
whatever the thread count, so db does not depend on ``threads``.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from gemm cimport gemm_rowmajor

from cnn._blas_threads import blas_threads
from cnn._checks import check_blas_sizes, check_dense, check_dout
from cnn._threads import GEMM_WORK_PER_THREAD, resolve_threads, threads_for


# Columns of dout per db work item: 64 doubles = 512 bytes of accumulator, so
# neighbouring threads rarely share a cache line and every row read is long.
cdef enum:
    DB_BLOCK = 64


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


cdef inline Py_ssize_t block_start(Py_ssize_t i, Py_ssize_t blocks, Py_ssize_t size) noexcept nogil:
    """Start of block i when size is cut into ``blocks`` near-equal blocks."""
    return i * size // blocks


cdef void dense_forward_kernel(const floating[:, ::1] x, const floating[:, ::1] w,
                               const floating[::1] b, floating[:, ::1] out, bint relu,
                               int threads) noexcept nogil:
    """out (N, M) = x (N, D) @ w.T (D, M) + b, one block of outputs per thread;
    relu: then ReLU on the thread's block (an epilogue while it is in cache)."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], M = w.shape[0]
    cdef Py_ssize_t i, n, m, lo, hi
    for i in prange(threads, num_threads=threads, schedule="static"):
        lo = block_start(i, threads, M)
        hi = block_start(i + 1, threads, M)
        if hi > lo:
            for n in range(N):
                for m in range(lo, hi):
                    out[n, m] = b[m]
            gemm_rowmajor(False, True, <int>N, <int>(hi - lo), <int>D, <floating>1.0,
                          &x[0, 0], <int>D, &w[lo, 0], <int>D, <floating>1.0,
                          &out[0, lo], <int>M)
            if relu:
                for n in range(N):
                    for m in range(lo, hi):
                        if out[n, m] < 0:          # a NaN stays, as in relu_forward
                            out[n, m] = 0


cdef void dense_forward_nogil(const floating[:, ::1] x, const floating[:, ::1] w,
                              const floating[::1] b, floating[:, ::1] out, bint relu,
                              int threads):
    """dense_forward_kernel without the GIL (the arrays are typed, and held, on entry)."""
    with nogil:
        dense_forward_kernel(x, w, b, out, relu, threads)


cdef run_dense_forward(x, w, b, out, bint relu, int threads):
    """dense_forward_nogil for x's dtype."""
    if x.dtype == np.float32:
        dense_forward_nogil[float](x, w, b, out, relu, threads)
    else:
        dense_forward_nogil[double](x, w, b, out, relu, threads)


cdef void dense_backward_kernel(const floating[:, ::1] x, const floating[:, ::1] w,
                                const floating[:, ::1] dout, floating[:, ::1] dx,
                                floating[:, ::1] dw, int threads) noexcept nogil:
    """dx = dout @ w and dw = dout.T @ x, one block of input features per thread."""
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], M = w.shape[0]
    cdef Py_ssize_t i, lo, hi
    for i in prange(threads, num_threads=threads, schedule="static"):
        lo = block_start(i, threads, D)
        hi = block_start(i + 1, threads, D)
        if hi > lo:
            gemm_rowmajor(False, False, <int>N, <int>(hi - lo), <int>M, <floating>1.0,
                          &dout[0, 0], <int>M, &w[0, lo], <int>D, <floating>0.0,
                          &dx[0, lo], <int>D)
            gemm_rowmajor(True, False, <int>M, <int>(hi - lo), <int>N, <floating>1.0,
                          &dout[0, 0], <int>M, &x[0, lo], <int>D, <floating>0.0,
                          &dw[0, lo], <int>D)


def _gemm_threads(threads, N, D, M):
    # At least GEMM_WORK_PER_THREAD multiply-adds per thread: below that,
    # waking a sleeping thread costs more than it saves.
    return threads_for(threads, N * D * M, GEMM_WORK_PER_THREAD)


def dense_forward(x, w, b, *, relu=False, threads=None):
    """Fully connected forward.

    x (N, D), w (M, D) laid out (out, in), b (M,). Returns out (N, M) =
    x @ w.T + b and a cache for dense_backward. relu=True: relu(out) and cache
    None, Dense -> ReLU as one op for inference.
    """
    x, w, b = check_dense(x, w, b)
    N, D = x.shape
    M = w.shape[0]
    check_blas_sizes("dense", N, D, M)
    nt = min(_gemm_threads(threads, N, D, M), M)
    out = np.empty((N, M), dtype=x.dtype)
    with blas_threads(1):
        run_dense_forward(x, w, b, out, bool(relu), nt)
    return out, (None if relu else (x, w, b))


def dense_backward(dout, cache, *, threads=None):
    """Gradients of dense_forward: (dx, dw, db) shaped like (x, w, b)."""
    if cache is None:
        raise ValueError("no cache: the forward pass ran with relu=True (inference)")
    x, w, b = cache
    # Re-validate the cached arrays: the kernels trust every shape they are given.
    x, w, b = check_dense(x, w, b)
    N, D = x.shape
    M = w.shape[0]
    dout = check_dout(dout, (N, M), x.dtype)
    check_blas_sizes("dense", N, D, M)
    nt = min(_gemm_threads(threads, N, D, M), D)
    db_threads = max(1, min(nt, (M + DB_BLOCK - 1) // DB_BLOCK))
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    db_acc = np.zeros(M, dtype=np.float64)
    with blas_threads(1):
        if x.dtype == np.float32:
            dense_backward_kernel[float](x, w, dout, dx, dw, nt)
            column_sum_kernel[float](dout, db_acc, db_threads)
        else:
            dense_backward_kernel[double](x, w, dout, dx, dw, nt)
            column_sum_kernel[double](dout, db_acc, db_threads)
    db = db_acc.astype(x.dtype, copy=False)
    return dx, dw, db


cdef class DensePlan:
    """A dense layer (and the ReLU after it, ``relu=True``) prepared once for
    inference: a step of cnn.plan.InferencePlan. w (M, D) and b (M,) are kept by
    reference when C-contiguous in the right dtype (else copied). ``run(x)`` maps
    x (N, D) to out (N, M) = dense_forward's, checking only x's dtype and width,
    without the GIL, and needs its caller to hold ``blas_threads(1)``; calling
    the plan takes it. Nothing is kept between calls."""
    cdef readonly object dtype
    cdef readonly bint relu
    cdef readonly int threads
    cdef readonly Py_ssize_t D, M
    cdef object w, b

    def __init__(self, w, b, *, relu=False, threads=None):
        w = np.asarray(w)
        probe = np.zeros((1, w.shape[1] if w.ndim == 2 else 1),
                         dtype=w.dtype if w.dtype in (np.float32, np.float64) else np.float32)
        probe, w, b = check_dense(probe, w, b)
        self.M, self.D = w.shape[0], w.shape[1]
        check_blas_sizes("dense", 1, self.D, self.M)
        self.dtype = probe.dtype
        self.w = np.ascontiguousarray(w, dtype=self.dtype)
        self.b = np.ascontiguousarray(b, dtype=self.dtype)
        self.relu = bool(relu)
        self.threads = resolve_threads(threads)

    @property
    def input_shape(self):
        return (self.D,)

    @property
    def output_shape(self):
        return (self.M,)

    def run(self, x):
        """out (N, M) for x (N, D)."""
        if (type(x) is not np.ndarray or x.dtype != self.dtype or x.ndim != 2
                or x.shape[1] != self.D):
            raise ValueError(f"x must be a {self.dtype} array of shape (N, {self.D}), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {np.shape(x)}")
        x = np.ascontiguousarray(x)
        cdef Py_ssize_t N = x.shape[0]
        check_blas_sizes("dense", N, self.D, self.M)
        out = np.empty((N, self.M), dtype=self.dtype)
        if N == 0:
            return out
        run_dense_forward(x, self.w, self.b, out, self.relu,
                          min(_gemm_threads(self.threads, N, self.D, self.M), self.M))
        return out

    def __call__(self, x):
        with blas_threads(1):
            return self.run(x)
