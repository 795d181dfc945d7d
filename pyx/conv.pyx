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

Stride 1 uses im2col.pxd's wide layout: cols come from a zero-padded copy of
the image in C*KH*KW long memcpy calls, and the GEMM computes every column of
the padded width, the few junk columns being dropped when out is copied from
the thread's wide buffer (and zero in the wide copy of dout on the way back).

BLAS threads: each GEMM runs single-threaded (threadpoolctl finds SciPy's
OpenBLAS, cnn._blas_threads sets its thread count), so one pool of threads
does all the work. The alternative, one batch-wide GEMM on OpenBLAS's threads
between parallel im2col/col2im passes, measured 55-70 GFLOP/s against ~100 for
this design on 2 cores: OpenBLAS's workers busy-wait after each call and take
cores from the OpenMP threads that come next. With fewer images than threads
(a batch of one at inference) the forward pass cuts each image's filters into
blocks, one GEMM per thread; backward then runs the images serially and lets
BLAS have the threads.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from im2col cimport ConvGeometry, conv_filter_block, conv_geometry, conv_image_backward

from cnn._blas_threads import blas_threads
from cnn._checks import check_blas_sizes, check_conv2d, check_dout
from cnn._threads import forward_split, split_threads


cdef void conv2d_forward_kernel(const floating[:, :, :, ::1] x, const floating[:, ::1] w2,
                                const floating[::1] b, floating[:, :, ::1] out,
                                floating[:, ::1] pad_work, floating[:, :, ::1] work,
                                floating[:, :, ::1] wide_out, ConvGeometry g,
                                Py_ssize_t filter_blocks, int loop_threads) noexcept nogil:
    """out (N, F, P) = w2 (F, K) @ im2col(x[n]) + b, one (image, filter block) per
    iteration. In the wide layout the GEMM writes the thread's wide_out (F, L),
    whose real columns are then copied out."""
    cdef Py_ssize_t N = x.shape[0], F = g.F, L = g.L, Hc = g.Hc, Wc = g.Wc
    cdef Py_ssize_t item, n, f, f0, f1, oh
    cdef int tid
    cdef floating* o
    for item in prange(N * filter_blocks, num_threads=loop_threads, schedule="static"):
        tid = threadid()
        n = item // filter_blocks
        f0 = (item % filter_blocks) * F // filter_blocks
        f1 = (item % filter_blocks + 1) * F // filter_blocks
        o = &wide_out[tid, 0, 0] if g.wide else &out[n, f0, 0]
        conv_filter_block(&x[n, 0, 0, 0], &w2[0, 0], &b[0], &pad_work[tid, 0],
                          &work[tid, 0, 0], o, f0, f1, &g)
        if g.wide:
            for f in range(f1 - f0):
                for oh in range(Hc):
                    memcpy(&out[n, f0 + f, oh * Wc], o + f * L + oh * g.row,
                           Wc * sizeof(floating))


cdef void conv2d_backward_kernel(const floating[:, :, :, ::1] x, const floating[:, ::1] w2,
                                 const floating[:, :, ::1] dout, floating[:, :, :, ::1] dx,
                                 floating[:, :, ::1] dw_parts, floating[:, ::1] db_parts,
                                 floating[:, ::1] pad_work, floating[:, :, ::1] work,
                                 floating[:, :, ::1] wide_dout, floating[:, :, ::1] dwork,
                                 ConvGeometry g, bint need_dx, int loop_threads) noexcept nogil:
    """dx[n] = col2im(w2.T @ dout[n]) when need_dx; thread t adds its images' dw, db
    into part t. In the wide layout dout[n] is first spread into the thread's
    wide_dout (F, L) with zeros in the junk columns."""
    cdef Py_ssize_t N = x.shape[0], F = g.F, L = g.L, Hc = g.Hc, Wc = g.Wc
    cdef Py_ssize_t n, f, p, oh
    cdef int tid
    cdef floating* cols
    cdef floating* dcols
    cdef const floating* d
    cdef floating* dw
    cdef floating acc
    for n in prange(N, num_threads=loop_threads, schedule="static"):
        tid = threadid()
        cols = &work[tid, 0, 0]
        dcols = &dwork[tid, 0, 0]
        d = &dout[n, 0, 0]
        for f in range(F):
            acc = 0
            for p in range(Hc * Wc):
                acc = acc + d[f * Hc * Wc + p]
            db_parts[tid, f] += acc
        if g.wide:
            dw = &wide_dout[tid, 0, 0]
            memset(dw, 0, F * L * sizeof(floating))
            for f in range(F):
                for oh in range(Hc):
                    memcpy(dw + f * L + oh * g.row, d + (f * Hc + oh) * Wc,
                           Wc * sizeof(floating))
            d = dw
        conv_image_backward(&x[n, 0, 0, 0], &w2[0, 0], d, &dw_parts[tid, 0, 0],
                            &dx[n, 0, 0, 0], &pad_work[tid, 0], cols, dcols, need_dx, &g)


def conv2d_forward(x, w, b, stride=1, pad=0, *, threads=None):
    """Convolution (cross-correlation) forward.

    x (N, C, H, W), w (F, C, KH, KW), b (F,); stride and pad are an int or a
    (vertical, horizontal) pair. Returns out (N, F, H', W') with
    H' = (H + 2*pad_h - KH) // stride_h + 1, and a cache for conv2d_backward.
    """
    x, w, b, stride, pad, conv_size = check_conv2d(x, w, b, stride, pad)
    cdef ConvGeometry g = conv_geometry(x.shape, w.shape, stride, pad, conv_size)
    N, F = x.shape[0], g.F
    check_blas_sizes("conv2d", g.F, g.K, g.L)
    filter_blocks, loop_threads = forward_split(threads, N, g.F, g.K * g.L)
    out = np.empty((N, F, g.Hc * g.Wc), dtype=x.dtype)
    pad_work = np.empty((loop_threads, g.C * g.plane), dtype=x.dtype)
    work = np.empty((loop_threads, g.K, g.L), dtype=x.dtype)
    wide_out = np.empty((loop_threads, F, g.L) if g.wide else (1, 1, 1), dtype=x.dtype)
    w2 = w.reshape(F, g.K)
    with blas_threads(1):
        if x.dtype == np.float32:
            conv2d_forward_kernel[float](x, w2, b, out, pad_work, work, wide_out, g,
                                         filter_blocks, loop_threads)
        else:
            conv2d_forward_kernel[double](x, w2, b, out, pad_work, work, wide_out, g,
                                          filter_blocks, loop_threads)
    return out.reshape(N, F, g.Hc, g.Wc), (x, w, b, stride, pad)


def conv2d_backward(dout, cache, *, threads=None, need_dx=True):
    """Gradients of conv2d_forward: (dx, dw, db) shaped like (x, w, b).

    need_dx=False skips the input gradient (dx is None): a network's first
    layer has no use for it, and it costs a GEMM and a col2im.
    """
    x, w, b, stride, pad = cache
    # Re-validate the cached arrays: the kernels trust every shape they are given.
    x, w, b, stride, pad, conv_size = check_conv2d(x, w, b, stride, pad)
    cdef ConvGeometry g = conv_geometry(x.shape, w.shape, stride, pad, conv_size)
    N, F = x.shape[0], g.F
    dout = check_dout(dout, (N, F, g.Hc, g.Wc), x.dtype)
    check_blas_sizes("conv2d", g.F, g.K, g.L)
    loop_threads, gemm_threads = split_threads(threads, N)
    need_dx = bool(need_dx)
    # Without dx, placeholders of one element per image/thread: never indexed.
    dx = np.empty_like(x) if need_dx else np.empty((N, 1, 1, 1), dtype=x.dtype)
    dw_parts = np.zeros((loop_threads, F, g.K), dtype=x.dtype)
    db_parts = np.zeros((loop_threads, F), dtype=x.dtype)
    pad_work = np.empty((loop_threads, g.C * g.plane), dtype=x.dtype)
    work = np.empty((loop_threads, g.K, g.L), dtype=x.dtype)
    wide_dout = np.empty((loop_threads, F, g.L) if g.wide else (1, 1, 1), dtype=x.dtype)
    dwork = np.empty((loop_threads, g.K, g.L) if need_dx else (loop_threads, 1, 1),
                     dtype=x.dtype)
    w2 = w.reshape(F, g.K)
    d3 = dout.reshape(N, F, g.Hc * g.Wc)
    with blas_threads(gemm_threads):
        if x.dtype == np.float32:
            conv2d_backward_kernel[float](x, w2, d3, dx, dw_parts, db_parts, pad_work, work,
                                          wide_dout, dwork, g, need_dx, loop_threads)
        else:
            conv2d_backward_kernel[double](x, w2, d3, dx, dw_parts, db_parts, pad_work, work,
                                           wide_dout, dwork, g, need_dx, loop_threads)
    dw = dw_parts.sum(axis=0) if loop_threads > 1 else dw_parts[0]
    db = db_parts.sum(axis=0) if loop_threads > 1 else db_parts[0]
    return (dx if need_dx else None), dw.reshape(w.shape), db
