"""conv2d forward and backward: batch-wide im2col + one GEMM per product.

Layout: NCHW, C-contiguous. The patch matrix ``cols`` is (K, N*P) with
K = C*KH*KW rows (one per filter tap, in w's memory order) and one column per
output pixel of the batch, image by image (P = H'*W'). Then

    out2   (F, N*P) = w (F, K) @ cols (K, N*P)
    dw     (F, K)   = dout2 (F, N*P) @ cols.T
    dcols  (K, N*P) = w.T (K, F) @ dout2 (F, N*P)    then col2im adds into dx

where out2/dout2 are out/dout with the batch axis moved inside the filter axis
(a copy of contiguous P-long rows). Each product is one large GEMM, which
OpenBLAS runs on all threads near its peak; many small per-image GEMMs called
concurrently from OpenMP threads measured 25% slower here.

Parallel axis: images, for im2col, col2im and the NCHW <-> (F, N*P) copies.
Image n only touches its own columns n*P..(n+1)*P-1 of cols/dcols and its own
slice of x/dx/out, so no two threads write the same element. db is a sum over
the batch, parallel over filters (one thread per row of dout2). dw's reduction
over the batch happens inside the GEMM.

The forward pass keeps ``cols`` in its cache so backward does not rebuild it.
"""
import numpy as np

from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from cnn._checks import check_conv2d, check_dout
from cnn._blas_threads import blas_threads
from cnn._threads import resolve_threads

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


cdef void im2col(const floating* x, floating* cols, Py_ssize_t ld,
                 Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                 Py_ssize_t Hout, Py_ssize_t Wout) noexcept nogil:
    """One image x (C, H, W) into its Hout*Wout columns of cols (C*KH*KW rows,
    row stride ld); padding reads as 0."""
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
                        memcpy(dst + ow_lo, src + ow_lo + iw0, (ow_hi - ow_lo) * sizeof(floating))
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow] = src[ow * sw + iw0]
                    if ow_hi < Wout:
                        memset(dst + ow_hi, 0, (Wout - ow_hi) * sizeof(floating))
                cols += ld


cdef void col2im(const floating* cols, Py_ssize_t ld, floating* x,
                 Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                 Py_ssize_t Hout, Py_ssize_t Wout) noexcept nogil:
    """Add one image's Hout*Wout columns of cols (row stride ld) back into x
    (C, H, W), zeroed first.

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
                cols += ld


cdef void im2col_batch(const floating[:, :, :, ::1] x, floating[:, ::1] cols,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Hout, Py_ssize_t Wout,
                       int threads) noexcept nogil:
    cdef Py_ssize_t n, P = Hout * Wout
    for n in prange(x.shape[0], num_threads=threads, schedule="static"):
        im2col(&x[n, 0, 0, 0], &cols[0, n * P], cols.shape[1], x.shape[1], x.shape[2],
               x.shape[3], KH, KW, sh, sw, ph, pw, Hout, Wout)


cdef void col2im_batch(const floating[:, ::1] dcols, floating[:, :, :, ::1] dx,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t Hout, Py_ssize_t Wout,
                       int threads) noexcept nogil:
    cdef Py_ssize_t n, P = Hout * Wout
    for n in prange(dx.shape[0], num_threads=threads, schedule="static"):
        col2im(&dcols[0, n * P], dcols.shape[1], &dx[n, 0, 0, 0], dx.shape[1], dx.shape[2],
               dx.shape[3], KH, KW, sh, sw, ph, pw, Hout, Wout)


cdef void unfold_batch_add_bias(const floating[:, ::1] out2, const floating[::1] b,
                                floating[:, :, ::1] out, int threads) noexcept nogil:
    """out[n, f, :] = out2[f, n*P:(n+1)*P] + b[f]."""
    cdef Py_ssize_t N = out.shape[0], F = out.shape[1], P = out.shape[2]
    cdef Py_ssize_t n, f, p
    cdef const floating* src
    cdef floating* dst
    cdef floating bias
    for n in prange(N, num_threads=threads, schedule="static"):
        for f in range(F):
            src = &out2[f, n * P]
            dst = &out[n, f, 0]
            bias = b[f]
            for p in range(P):
                dst[p] = src[p] + bias


cdef void fold_batch(const floating[:, :, ::1] dout, floating[:, ::1] dout2,
                     int threads) noexcept nogil:
    """dout2[f, n*P:(n+1)*P] = dout[n, f, :]."""
    cdef Py_ssize_t N = dout.shape[0], F = dout.shape[1], P = dout.shape[2]
    cdef Py_ssize_t n, f
    for n in prange(N, num_threads=threads, schedule="static"):
        for f in range(F):
            memcpy(&dout2[f, n * P], &dout[n, f, 0], P * sizeof(floating))


cdef void row_sums(const floating[:, ::1] a, floating[::1] sums, int threads) noexcept nogil:
    cdef Py_ssize_t f, q
    cdef floating acc
    for f in prange(a.shape[0], num_threads=threads, schedule="static"):
        acc = 0
        for q in range(a.shape[1]):
            acc = acc + a[f, q]
        sums[f] = acc


cdef void matmul(bint trans_a, bint trans_b, const floating[:, ::1] a,
                 const floating[:, ::1] b, floating[:, ::1] c) noexcept nogil:
    """c = op(a) @ op(b), shapes already checked by the caller."""
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    gemm_rowmajor(trans_a, trans_b, <int>c.shape[0], <int>c.shape[1], k, <floating>1.0,
                  &a[0, 0], <int>a.shape[1], &b[0, 0], <int>b.shape[1], <floating>0.0,
                  &c[0, 0], <int>c.shape[1])


def _check_blas_sizes(*sizes):
    # BLAS takes 32-bit ints; a dimension past that would wrap around.
    if max(sizes) >= 2**31:
        raise ValueError(f"conv2d matrix dimension {max(sizes)} exceeds the BLAS int limit")


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
    _check_blas_sizes(F, K, N * P)
    nt = resolve_threads(threads)
    cols = np.empty((K, N * P), dtype=x.dtype)
    out2 = np.empty((F, N * P), dtype=x.dtype)
    out = np.empty((N, F, P), dtype=x.dtype)
    w2 = w.reshape(F, K)
    with blas_threads(nt):
        if x.dtype == np.float32:
            im2col_batch[float](x, cols, KH, KW, stride[0], stride[1], pad[0], pad[1],
                                Hout, Wout, nt)
            matmul[float](False, False, w2, cols, out2)
            unfold_batch_add_bias[float](out2, b, out, nt)
        else:
            im2col_batch[double](x, cols, KH, KW, stride[0], stride[1], pad[0], pad[1],
                                 Hout, Wout, nt)
            matmul[double](False, False, w2, cols, out2)
            unfold_batch_add_bias[double](out2, b, out, nt)
    return out.reshape(N, F, Hout, Wout), (x, w, b, stride, pad, cols)


def conv2d_backward(dout, cache, *, threads=None):
    """Gradients of conv2d_forward: (dx, dw, db) shaped like (x, w, b)."""
    x, w, b, stride, pad, cols = cache
    # Re-validate the cached arrays: the kernels trust every shape they are given.
    x, w, b, stride, pad, (Hout, Wout) = check_conv2d(x, w, b, stride, pad)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    K, P = C * KH * KW, Hout * Wout
    if not (isinstance(cols, np.ndarray) and cols.shape == (K, N * P)
            and cols.dtype == x.dtype and cols.flags.c_contiguous):
        raise ValueError("cache does not come from this backend's conv2d_forward")
    dout = check_dout(dout, (N, F, Hout, Wout), x.dtype)
    nt = resolve_threads(threads)
    dout2 = np.empty((F, N * P), dtype=x.dtype)
    dcols = np.empty((K, N * P), dtype=x.dtype)
    dw = np.empty((F, K), dtype=x.dtype)
    db = np.empty(F, dtype=x.dtype)
    dx = np.empty_like(x)
    w2 = w.reshape(F, K)
    d3 = dout.reshape(N, F, P)
    with blas_threads(nt):
        if x.dtype == np.float32:
            fold_batch[float](d3, dout2, nt)
            row_sums[float](dout2, db, nt)
            matmul[float](False, True, dout2, cols, dw)
            matmul[float](True, False, w2, dout2, dcols)
            col2im_batch[float](dcols, dx, KH, KW, stride[0], stride[1], pad[0], pad[1],
                                Hout, Wout, nt)
        else:
            fold_batch[double](d3, dout2, nt)
            row_sums[double](dout2, db, nt)
            matmul[double](False, True, dout2, cols, dw)
            matmul[double](True, False, w2, dout2, dcols)
            col2im_batch[double](dcols, dx, KH, KW, stride[0], stride[1], pad[0], pad[1],
                                 Hout, Wout, nt)
    return dx, dw.reshape(w.shape), db
