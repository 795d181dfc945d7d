"""max and average pooling forward and backward, parallel over the (n, c) planes.

Layout: NCHW, C-contiguous, no padding. x is viewed as (N*C, H, W) planes and
out as (N*C, H', W'); window (i, j) of a plane covers rows i*sh .. i*sh+KH-1
and columns j*sw .. j*sw+KW-1.

Max pool remembers, for every output, the flat index (row * W + col) of its
maximum within the H*W plane, as int64 in the cache. Ties go to the first
maximum in row-major window order, and a NaN beats any number (the first NaN
wins), which is np.argmax's rule, so the NumPy reference picks the same element.
The common 2x2 stride-2 window has its own unrolled loop.

Parallel axis: planes. A plane's outputs, and in backward its dx, are written
by the one thread that owns the plane, so overlapping windows (stride <
kernel) accumulate into dx without races and without per-thread buffers.
Backward zeroes a plane's dx and adds each output's gradient into it: max pool
to the stored argmax (an index outside [0, H*W) is skipped, so a tampered
cache cannot write out of bounds), average pool spread evenly over the window.

Small inputs run on fewer threads: each thread gets at least GRAIN elements,
since waking a thread costs more than pooling a few thousand values.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from cnn._checks import check_dout, check_pool2d
from cnn._threads import resolve_threads

GRAIN = 16384  # elements per thread, at least


cdef inline bint beats(floating v, floating best) noexcept nogil:
    """v becomes the running max: strictly greater, or the first NaN (np.argmax's rule)."""
    return v > best or (v != v and best == best)


cdef void maxpool_plane(const floating* x, floating* out, int64_t* arg,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Hout,
                        Py_ssize_t Wout) noexcept nogil:
    """out, arg (Hout, Wout) from one plane x (H, W)."""
    cdef Py_ssize_t i, j, kh, kw, base, row, best_at, c
    cdef const floating* r0
    cdef const floating* r1
    cdef floating best, v
    if KH == 2 and KW == 2 and sh == 2 and sw == 2:
        for i in range(Hout):
            base = 2 * i * W
            r0 = x + base
            r1 = r0 + W
            for j in range(Wout):
                c = 2 * j
                best = r0[c]
                best_at = base + c
                v = r0[c + 1]
                if beats(v, best):
                    best = v
                    best_at = base + c + 1
                v = r1[c]
                if beats(v, best):
                    best = v
                    best_at = base + W + c
                v = r1[c + 1]
                if beats(v, best):
                    best = v
                    best_at = base + W + c + 1
                out[j] = best
                arg[j] = best_at
            out += Wout
            arg += Wout
        return
    for i in range(Hout):
        for j in range(Wout):
            base = i * sh * W + j * sw
            best = x[base]
            best_at = base
            for kh in range(KH):
                row = base + kh * W
                for kw in range(KW):
                    v = x[row + kw]
                    if beats(v, best):
                        best = v
                        best_at = row + kw
            out[j] = best
            arg[j] = best_at
        out += Wout
        arg += Wout


cdef void maxpool_forward_kernel(const floating[:, :, ::1] x, floating[:, :, ::1] out,
                                 int64_t[:, :, ::1] arg, Py_ssize_t KH, Py_ssize_t KW,
                                 Py_ssize_t sh, Py_ssize_t sw, int threads) noexcept nogil:
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t Hout = out.shape[1], Wout = out.shape[2]
    cdef Py_ssize_t p
    for p in prange(P, num_threads=threads, schedule="static"):
        maxpool_plane(&x[p, 0, 0], &out[p, 0, 0], &arg[p, 0, 0], H, W, KH, KW, sh, sw,
                      Hout, Wout)


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
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Hout,
                        Py_ssize_t Wout) noexcept nogil:
    """out (Hout, Wout) from one plane x (H, W): window sums in row-major order / KH*KW."""
    cdef Py_ssize_t i, j, kh, kw, c
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* src
    cdef floating acc
    cdef floating count = <floating>(KH * KW)
    if KH == 2 and KW == 2 and sh == 2 and sw == 2:
        for i in range(Hout):
            r0 = x + 2 * i * W
            r1 = r0 + W
            for j in range(Wout):
                c = 2 * j
                acc = r0[c]
                acc = acc + r0[c + 1]
                acc = acc + r1[c]
                acc = acc + r1[c + 1]
                out[j] = acc / count
            out += Wout
        return
    for i in range(Hout):
        for j in range(Wout):
            src = x + i * sh * W + j * sw
            acc = src[0]
            for kw in range(1, KW):
                acc = acc + src[kw]
            for kh in range(1, KH):
                src = src + W
                for kw in range(KW):
                    acc = acc + src[kw]
            out[j] = acc / count
        out += Wout


cdef void avgpool_forward_kernel(const floating[:, :, ::1] x, floating[:, :, ::1] out,
                                 Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                                 int threads) noexcept nogil:
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t Hout = out.shape[1], Wout = out.shape[2]
    cdef Py_ssize_t p
    for p in prange(P, num_threads=threads, schedule="static"):
        avgpool_plane(&x[p, 0, 0], &out[p, 0, 0], H, W, KH, KW, sh, sw, Hout, Wout)


cdef void avgpool_backward_plane(const floating* g, floating* dx,
                                 Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Hout,
                                 Py_ssize_t Wout) noexcept nogil:
    """dx (H, W) of one plane = sum over windows of dout / (KH*KW), offset by offset."""
    cdef Py_ssize_t i, j, kh, kw
    cdef floating* dst
    cdef const floating* src
    cdef floating scale = <floating>1 / <floating>(KH * KW)
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
    """Threads for a loop over ``planes`` planes of ``size`` elements in all."""
    return max(1, min(resolve_threads(threads), planes, size // GRAIN))


def _check_argmax(argmax, shape):
    """The argmax of a max-pool cache: int64 with the pooled output's shape."""
    if not isinstance(argmax, np.ndarray):
        raise TypeError(f"cache argmax must be a numpy array, got {type(argmax).__name__}")
    if argmax.dtype != np.int64:
        raise TypeError(f"cache argmax must be int64, got dtype {argmax.dtype}")
    if argmax.shape != tuple(shape):
        raise ValueError(f"cache argmax must have the pooled output's shape {tuple(shape)}, "
                         f"got {argmax.shape}")
    return np.ascontiguousarray(argmax)


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
    argmax = _check_argmax(argmax, (N, C, Hout, Wout))
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
