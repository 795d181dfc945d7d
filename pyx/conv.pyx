"""conv2d forward and backward: im2col + GEMM, parallel over the batch.

Layout: NCHW, C-contiguous. For one image the patch matrix ``cols`` is
(K, P) with K = C*KH*KW rows (one per filter tap, in w's memory order) and
P = H'*W' columns (one per output pixel), so that

    out[n] (F, P)  = w (F, K) @ cols (K, P)          one GEMM, written in place
    dw     (F, K) += dout[n] (F, P) @ cols.T (P, K)
    dcols  (K, P)  = w.T (K, F) @ dout[n] (F, P)     then col2im adds into dx[n]

Parallel axis: images. Each thread owns a (K, P) workspace that stays in its
L2 cache between im2col and the GEMM reading it; out[n] and dx[n] are disjoint
per image, so no two threads write the same element. dw and db are reductions
over images: each thread sums into its own slice of a (threads, F, K) buffer
and the slices are added once the parallel loop is over. Backward rebuilds an
image's cols rather than caching all N of them from the forward pass: the
rebuild costs little next to the GEMMs and lands in the thread's L2, while the
cache would hold K*N*P values per layer (14 MB for a 64-image batch of convnet's
second layer).

BLAS threads: while the images are split over OpenMP threads, each GEMM runs
single-threaded (threadpoolctl limits SciPy's OpenBLAS), so one pool of threads
does all the work. The alternative, one batch-wide GEMM on OpenBLAS's threads
between parallel im2col/col2im passes, measured 55-70 GFLOP/s against ~100 for
this design on 2 cores: OpenBLAS's workers busy-wait after each call and take
cores from the OpenMP threads that come next. With fewer images than threads
(a batch of one) the loop runs serially and BLAS gets the threads instead.
"""
import numpy as np

from cython.parallel cimport prange, threadid
from libc.string cimport memset

from cnn._checks import check_blas_sizes, check_conv2d, check_dout
from cnn._blas_threads import split_threads, blas_threads

include "gemm.pxi"


cdef inline Py_ssize_t first_valid(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """Smallest o >= 0 with o*stride + offset >= 0 (offset = k - pad)."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t end_valid(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                 Py_ssize_t out) noexcept nogil:
    """One past the largest o < out with o*stride + offset < size."""
    cdef Py_ssize_t last = size - 1 - offset
    if last < 0:
        return 0
    last = last // stride + 1
    return last if last < out else out


cdef void im2col(const floating* x, floating* cols,
                 Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                 Py_ssize_t Hout, Py_ssize_t Wout) noexcept nogil:
    """cols (C*KH*KW, Hout*Wout) from one image x (C, H, W); padding reads as 0."""
    cdef Py_ssize_t c, kh, kw, oh, ow, ih, ow_lo, ow_hi, oh_lo, oh_hi, iw0
    cdef floating* dst
    cdef const floating* src
    for c in range(C):
        for kh in range(KH):
            oh_lo = first_valid(kh - ph, sh)
            oh_hi = end_valid(kh - ph, sh, H, Hout)
            for kw in range(KW):
                ow_lo = first_valid(kw - pw, sw)
                ow_hi = end_valid(kw - pw, sw, W, Wout)
                for oh in range(Hout):
                    dst = cols + oh * Wout
                    if oh < oh_lo or oh >= oh_hi or ow_lo >= ow_hi:
                        memset(dst, 0, Wout * sizeof(floating))
                        continue
                    ih = oh * sh + kh - ph
                    iw0 = kw - pw
                    src = x + (c * H + ih) * W
                    if ow_lo > 0:
                        memset(dst, 0, ow_lo * sizeof(floating))
                    if sw == 1:
                        # Rows are short (a few dozen values): an inline loop the
                        # compiler vectorises beats a memcpy call here.
                        for ow in range(ow_lo, ow_hi):
                            dst[ow] = src[ow + iw0]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow] = src[ow * sw + iw0]
                    if ow_hi < Wout:
                        memset(dst + ow_hi, 0, (Wout - ow_hi) * sizeof(floating))
                cols += Hout * Wout


cdef void col2im(const floating* cols, floating* x,
                 Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                 Py_ssize_t Hout, Py_ssize_t Wout) noexcept nogil:
    """Add cols (C*KH*KW, Hout*Wout) back into one image x (C, H, W), zeroed first.

    The adjoint of im2col: overlapping windows accumulate, padding is dropped.
    """
    cdef Py_ssize_t c, kh, kw, oh, ow, ow_lo, ow_hi, oh_lo, oh_hi, iw0
    cdef const floating* src
    cdef floating* dst
    memset(x, 0, C * H * W * sizeof(floating))
    for c in range(C):
        for kh in range(KH):
            oh_lo = first_valid(kh - ph, sh)
            oh_hi = end_valid(kh - ph, sh, H, Hout)
            for kw in range(KW):
                ow_lo = first_valid(kw - pw, sw)
                ow_hi = end_valid(kw - pw, sw, W, Wout)
                iw0 = kw - pw
                for oh in range(oh_lo, oh_hi):
                    src = cols + oh * Wout
                    dst = x + (c * H + oh * sh + kh - ph) * W + iw0
                    if sw == 1:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow] += src[ow]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow * sw] += src[ow]
                cols += Hout * Wout


cdef void conv2d_forward_kernel(const floating[:, :, :, ::1] x, const floating[:, ::1] w2,
                                const floating[::1] b, floating[:, :, ::1] out,
                                floating[:, :, ::1] work, Py_ssize_t KH, Py_ssize_t KW,
                                Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                Py_ssize_t Hout, Py_ssize_t Wout, int loop_threads) noexcept nogil:
    """out (N, F, P) = w2 (F, K) @ im2col(x[n]) + b, one image per iteration."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w2.shape[0], K = w2.shape[1], P = Hout * Wout
    cdef Py_ssize_t n, f, p
    cdef int tid
    cdef floating* cols
    cdef floating* o
    for n in prange(N, num_threads=loop_threads, schedule="static"):
        tid = threadid()
        cols = &work[tid, 0, 0]
        im2col(&x[n, 0, 0, 0], cols, C, H, W, KH, KW, sh, sw, ph, pw, Hout, Wout)
        o = &out[n, 0, 0]
        for f in range(F):
            for p in range(P):
                o[f * P + p] = b[f]
        gemm_rowmajor(False, False, <int>F, <int>P, <int>K, <floating>1.0, &w2[0, 0], <int>K,
                      cols, <int>P, <floating>1.0, o, <int>P)


cdef void conv2d_backward_kernel(const floating[:, :, :, ::1] x, const floating[:, ::1] w2,
                                 const floating[:, :, ::1] dout, floating[:, :, :, ::1] dx,
                                 floating[:, :, ::1] dw_parts, floating[:, ::1] db_parts,
                                 floating[:, :, ::1] work, floating[:, :, ::1] dwork,
                                 Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                                 Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Hout, Py_ssize_t Wout,
                                 bint need_dx, int loop_threads) noexcept nogil:
    """dx[n] = col2im(w2.T @ dout[n]) when need_dx; thread t adds its images' dw, db
    into part t."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w2.shape[0], K = w2.shape[1], P = Hout * Wout
    cdef Py_ssize_t n, f, p
    cdef int tid
    cdef floating* cols
    cdef floating* dcols
    cdef const floating* d
    cdef floating acc
    for n in prange(N, num_threads=loop_threads, schedule="static"):
        tid = threadid()
        cols = &work[tid, 0, 0]
        dcols = &dwork[tid, 0, 0]
        d = &dout[n, 0, 0]
        im2col(&x[n, 0, 0, 0], cols, C, H, W, KH, KW, sh, sw, ph, pw, Hout, Wout)
        gemm_rowmajor(False, True, <int>F, <int>K, <int>P, <floating>1.0, d, <int>P,
                      cols, <int>P, <floating>1.0, &dw_parts[tid, 0, 0], <int>K)
        for f in range(F):
            acc = 0
            for p in range(P):
                acc = acc + d[f * P + p]
            db_parts[tid, f] += acc
        if need_dx:
            gemm_rowmajor(True, False, <int>K, <int>P, <int>F, <floating>1.0, &w2[0, 0],
                          <int>K, d, <int>P, <floating>0.0, dcols, <int>P)
            col2im(dcols, &dx[n, 0, 0, 0], C, H, W, KH, KW, sh, sw, ph, pw, Hout, Wout)


def conv2d_forward(x, w, b, stride=1, pad=0, *, threads=None):
    """Convolution (cross-correlation) forward.

    x (N, C, H, W), w (F, C, KH, KW), b (F,); stride and pad are an int or a
    (vertical, horizontal) pair. Returns out (N, F, H', W') with
    H' = (H + 2*pad_h - KH) // stride_h + 1, and a cache for conv2d_backward.
    """
    x, w, b, stride, pad, (Hout, Wout) = check_conv2d(x, w, b, stride, pad)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    K, P = C * KH * KW, Hout * Wout
    check_blas_sizes("conv2d", F, K, P)
    loop_threads, gemm_threads = split_threads(threads, N)
    out = np.empty((N, F, P), dtype=x.dtype)
    work = np.empty((loop_threads, K, P), dtype=x.dtype)
    w2 = w.reshape(F, K)
    with blas_threads(gemm_threads):
        if x.dtype == np.float32:
            conv2d_forward_kernel[float](x, w2, b, out, work, KH, KW, stride[0], stride[1],
                                         pad[0], pad[1], Hout, Wout, loop_threads)
        else:
            conv2d_forward_kernel[double](x, w2, b, out, work, KH, KW, stride[0], stride[1],
                                          pad[0], pad[1], Hout, Wout, loop_threads)
    return out.reshape(N, F, Hout, Wout), (x, w, b, stride, pad)


def conv2d_backward(dout, cache, *, threads=None, need_dx=True):
    """Gradients of conv2d_forward: (dx, dw, db) shaped like (x, w, b).

    need_dx=False skips the input gradient (dx is None): a network's first
    layer has no use for it, and it costs a GEMM and a col2im.
    """
    x, w, b, stride, pad = cache
    # Re-validate the cached arrays: the kernels trust every shape they are given.
    x, w, b, stride, pad, (Hout, Wout) = check_conv2d(x, w, b, stride, pad)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    dout = check_dout(dout, (N, F, Hout, Wout), x.dtype)
    K, P = C * KH * KW, Hout * Wout
    check_blas_sizes("conv2d", F, K, P)
    loop_threads, gemm_threads = split_threads(threads, N)
    need_dx = bool(need_dx)
    # Without dx, placeholders of one element per image/thread: never indexed.
    dx = np.empty_like(x) if need_dx else np.empty((N, 1, 1, 1), dtype=x.dtype)
    dw_parts = np.zeros((loop_threads, F, K), dtype=x.dtype)
    db_parts = np.zeros((loop_threads, F), dtype=x.dtype)
    work = np.empty((loop_threads, K, P), dtype=x.dtype)
    dwork = np.empty((loop_threads, K, P) if need_dx else (loop_threads, 1, 1), dtype=x.dtype)
    w2 = w.reshape(F, K)
    d3 = dout.reshape(N, F, P)
    with blas_threads(gemm_threads):
        if x.dtype == np.float32:
            conv2d_backward_kernel[float](x, w2, d3, dx, dw_parts, db_parts, work, dwork,
                                          KH, KW, stride[0], stride[1], pad[0], pad[1],
                                          Hout, Wout, need_dx, loop_threads)
        else:
            conv2d_backward_kernel[double](x, w2, d3, dx, dw_parts, db_parts, work, dwork,
                                           KH, KW, stride[0], stride[1], pad[0], pad[1],
                                           Hout, Wout, need_dx, loop_threads)
    dw = dw_parts.sum(axis=0) if loop_threads > 1 else dw_parts[0]
    db = db_parts.sum(axis=0) if loop_threads > 1 else db_parts[0]
    return (dx if need_dx else None), dw.reshape(w.shape), db
