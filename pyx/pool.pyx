"""max and average pooling forward and backward, parallel over the (n, c) planes.

Layout: NCHW, C-contiguous, no padding. x is viewed as (N*C, H, W) planes and
out as (N*C, H', W'); window (i, j) of a plane covers rows i*sh .. i*sh+KH-1
and columns j*sw .. j*sw+KW-1.

Max pool remembers, for every output, the flat index (row * W + col) of its
maximum within the H*W plane, as int64 in the cache. Ties go to the LAST
maximum in row-major window order (the layer notes' rule: "when we have
multiple max values that are equal we take the index of the last one in the
window"), and a NaN counts as larger than any number, the last NaN winning
too. So the running max moves to every element v with v >= max or v a NaN
(see beats), a number never displacing a NaN; the NumPy reference picks the
same element (np.argmax over the reversed window).
The running max is branch-free (the comparison on real data is a coin toss for
the branch predictor): the value is a max, the index moves under a 0/-1 mask
from v >= max, and the loops over a row of windows vectorise. That fast loop
ignores the NaN rule but notes any NaN it reads; such a plane is redone by the
exact, branchy, window-at-a-time loop. The common 2x2 stride-2 window has its
own unrolled loop.

Average pool sums each window in row-major order and divides by KH*KW, the
order the NumPy reference adds its strided slices in, so both round alike.

Parallel axis: planes. A plane's outputs, and in backward its dx, are written
by the one thread that owns the plane, so overlapping windows (stride <
kernel) accumulate into dx without races and without per-thread buffers.
Backward zeroes a plane's dx and adds each output's gradient into it: max pool
to the stored argmax (an index outside [0, H*W) is skipped, so a tampered
cache cannot write out of bounds), average pool spread evenly over the window.

Small inputs run on fewer threads: each thread gets at least
cnn._threads.POOL_WORK_PER_THREAD elements, since waking a thread costs more than
pooling a few thousand values.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from maxpool_plane cimport maxpool_plane, maxpool_plane_exact

from cnn._checks import check_argmax, check_dout, check_pool2d
from cnn._threads import POOL_WORK_PER_THREAD, threads_for


cdef void maxpool_forward_kernel(const floating[:, :, ::1] x, floating[:, :, ::1] out,
                                 int64_t[:, :, ::1] arg, Py_ssize_t KH, Py_ssize_t KW,
                                 Py_ssize_t sh, Py_ssize_t sw, int threads) noexcept nogil:
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2]
    cdef Py_ssize_t Hout = out.shape[1], Wout = out.shape[2]
    cdef Py_ssize_t p
    for p in prange(P, num_threads=threads, schedule="static"):
        if maxpool_plane(&x[p, 0, 0], &out[p, 0, 0], &arg[p, 0, 0], W, KH, KW, sh, sw,
                         Hout, Wout):
            maxpool_plane_exact(&x[p, 0, 0], &out[p, 0, 0], &arg[p, 0, 0], W, KH, KW,
                                sh, sw, Hout, Wout)


cdef void maxpool_backward_kernel(const floating[:, ::1] dout, const int64_t[:, ::1] arg,
                                  floating[:, ::1] dx, int threads) noexcept nogil:
    """dx (P, H*W): each plane zeroed, then dout added at the stored argmax."""
    cdef Py_ssize_t P = dx.shape[0], HW = dx.shape[1], Q = dout.shape[1]
    cdef Py_ssize_t p, q
    cdef int64_t k
    cdef floating* d
    cdef const floating* g
    cdef const int64_t* a
    for p in prange(P, num_threads=threads, schedule="static"):
        d = &dx[p, 0]
        g = &dout[p, 0]
        a = &arg[p, 0]
        memset(d, 0, HW * sizeof(floating))
        for q in range(Q):
            k = a[q]
            if k >= 0 and k < HW:
                d[k] += g[q]


cdef void avgpool_plane(const floating* x, floating* out,
                        Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Hout,
                        Py_ssize_t Wout) noexcept nogil:
    """out (Hout, Wout) from one plane x (H, W): window sums in row-major order / KH*KW."""
    cdef Py_ssize_t i, j, kh, kw, c, P = Hout * Wout
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* o
    cdef floating acc
    cdef floating count = <floating>(KH * KW)
    if KH == 2 and KW == 2 and sh == 2 and sw == 2:
        for i in range(Hout):
            r0 = x + 2 * i * W
            r1 = r0 + W
            o = out + i * Wout
            for j in range(Wout):
                c = 2 * j
                acc = r0[c]
                acc = acc + r0[c + 1]
                acc = acc + r1[c]
                acc = acc + r1[c + 1]
                o[j] = acc / count
        return
    # Offset-major, as the NumPy reference (same sums in the same order): the
    # j loop is contiguous when sw == 1 and vectorises.
    for kh in range(KH):
        for kw in range(KW):
            for i in range(Hout):
                r0 = x + (i * sh + kh) * W + kw
                o = out + i * Wout
                if kh == 0 and kw == 0:
                    for j in range(Wout):
                        o[j] = r0[j * sw]
                elif sw == 1:
                    for j in range(Wout):
                        o[j] = o[j] + r0[j]
                else:
                    for j in range(Wout):
                        o[j] = o[j] + r0[j * sw]
    for j in range(P):
        out[j] = out[j] / count


cdef void avgpool_forward_kernel(const floating[:, :, ::1] x, floating[:, :, ::1] out,
                                 Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                                 int threads) noexcept nogil:
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2]
    cdef Py_ssize_t Hout = out.shape[1], Wout = out.shape[2]
    cdef Py_ssize_t p
    for p in prange(P, num_threads=threads, schedule="static"):
        avgpool_plane(&x[p, 0, 0], &out[p, 0, 0], W, KH, KW, sh, sw, Hout, Wout)


cdef void avgpool_backward_plane(const floating* g, floating* dx,
                                 Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Hout,
                                 Py_ssize_t Wout) noexcept nogil:
    """dx (H, W) of one plane = sum over windows of dout / (KH*KW), offset by offset."""
    cdef Py_ssize_t i, j, kh, kw
    cdef floating* dst
    cdef const floating* src
    cdef floating scale = <floating>1 / <floating>(KH * KW)
    cdef floating v
    cdef floating* r0
    cdef floating* r1
    if KH == 2 and KW == 2 and sh == 2 and sw == 2:
        # Disjoint windows: every covered dx element gets exactly one value.
        if H != 2 * Hout or W != 2 * Wout:
            memset(dx, 0, H * W * sizeof(floating))
        for i in range(Hout):
            r0 = dx + 2 * i * W
            r1 = r0 + W
            src = g + i * Wout
            for j in range(Wout):
                v = src[j] * scale
                r0[2 * j] = v
                r0[2 * j + 1] = v
                r1[2 * j] = v
                r1[2 * j + 1] = v
        return
    memset(dx, 0, H * W * sizeof(floating))
    # Offset-major, as the NumPy reference, so both round the same way.
    for kh in range(KH):
        for kw in range(KW):
            for i in range(Hout):
                dst = dx + (i * sh + kh) * W + kw
                src = g + i * Wout
                if sw == 1:
                    for j in range(Wout):
                        dst[j] += src[j] * scale
                else:
                    for j in range(Wout):
                        dst[j * sw] += src[j] * scale


cdef void avgpool_backward_kernel(const floating[:, :, ::1] dout, floating[:, :, ::1] dx,
                                  Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                                  int threads) noexcept nogil:
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t Hout = dout.shape[1], Wout = dout.shape[2]
    cdef Py_ssize_t p
    for p in prange(P, num_threads=threads, schedule="static"):
        avgpool_backward_plane(&dout[p, 0, 0], &dx[p, 0, 0], H, W, KH, KW, sh, sw,
                               Hout, Wout)


def _loop_threads(threads, planes, size):
    """Threads for a loop over ``planes`` planes of ``size`` elements in all
    (cnn._threads' policy; no more threads than planes)."""
    return min(threads_for(threads, size, POOL_WORK_PER_THREAD), planes)


def maxpool2d_forward(x, kernel=2, stride=None, *, threads=None):
    """Max pooling forward.

    x (N, C, H, W); kernel and stride are an int or a (vertical, horizontal)
    pair, stride None meaning the kernel size. Returns out (N, C, H', W') with
    H' = (H - KH) // stride_h + 1, and a cache (x, kernel, stride, argmax) for
    maxpool2d_backward; argmax holds each maximum's flat index in its H*W plane.
    """
    x, (KH, KW), stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    nt = _loop_threads(threads, N * C, x.size)
    out = np.empty((N * C, Hout, Wout), dtype=x.dtype)
    argmax = np.empty((N * C, Hout, Wout), dtype=np.int64)
    x3 = x.reshape(N * C, H, W)
    if x.dtype == np.float32:
        maxpool_forward_kernel[float](x3, out, argmax, KH, KW, stride[0], stride[1], nt)
    else:
        maxpool_forward_kernel[double](x3, out, argmax, KH, KW, stride[0], stride[1], nt)
    return (out.reshape(N, C, Hout, Wout),
            (x, (KH, KW), stride, argmax.reshape(N, C, Hout, Wout)))


def maxpool2d_backward(dout, cache, *, threads=None):
    """Gradient of maxpool2d_forward: dx shaped like x; overlapping windows add up."""
    x, kernel, stride, argmax = cache
    # Re-validate the cache: the kernel trusts every shape it is given.
    x, kernel, stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    dout = check_dout(dout, (N, C, Hout, Wout), x.dtype)
    argmax = check_argmax(argmax, (N, C, Hout, Wout))
    nt = _loop_threads(threads, N * C, x.size)
    dx = np.empty((N * C, H * W), dtype=x.dtype)
    d2 = dout.reshape(N * C, Hout * Wout)
    a2 = argmax.reshape(N * C, Hout * Wout)
    if x.dtype == np.float32:
        maxpool_backward_kernel[float](d2, a2, dx, nt)
    else:
        maxpool_backward_kernel[double](d2, a2, dx, nt)
    return dx.reshape(x.shape)


def avgpool2d_forward(x, kernel=2, stride=None, *, threads=None):
    """Average pooling forward: as maxpool2d_forward, cache (x, kernel, stride)."""
    x, (KH, KW), stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    nt = _loop_threads(threads, N * C, x.size)
    out = np.empty((N * C, Hout, Wout), dtype=x.dtype)
    x3 = x.reshape(N * C, H, W)
    if x.dtype == np.float32:
        avgpool_forward_kernel[float](x3, out, KH, KW, stride[0], stride[1], nt)
    else:
        avgpool_forward_kernel[double](x3, out, KH, KW, stride[0], stride[1], nt)
    return out.reshape(N, C, Hout, Wout), (x, (KH, KW), stride)


def avgpool2d_backward(dout, cache, *, threads=None):
    """Gradient of avgpool2d_forward: dx shaped like x; overlapping windows add up."""
    x, kernel, stride = cache
    x, (KH, KW), stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    dout = check_dout(dout, (N, C, Hout, Wout), x.dtype)
    nt = _loop_threads(threads, N * C, x.size)
    dx = np.empty((N * C, H, W), dtype=x.dtype)
    d3 = dout.reshape(N * C, Hout, Wout)
    if x.dtype == np.float32:
        avgpool_backward_kernel[float](d3, dx, KH, KW, stride[0], stride[1], nt)
    else:
        avgpool_backward_kernel[double](d3, dx, KH, KW, stride[0], stride[1], nt)
    return dx.reshape(x.shape)
