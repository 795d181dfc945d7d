"""max and average pooling in NumPy: strided window slices (vectorised) and loops.

No padding, NCHW. With window (i, j) covering rows i*sh .. i*sh+KH-1 and
columns j*sw .. j*sw+KW-1 of each (n, c) plane:

    max:  out[n, c, i, j] = max_{kh, kw} x[n, c, i*sh + kh, j*sw + kw]
          argmax[n, c, i, j] = (i*sh + kh*) * W + (j*sw + kw*)   flat index in the plane
          dx[n, c].flat[argmax[n, c, i, j]] += dout[n, c, i, j]
    avg:  out[n, c, i, j] = sum_{kh, kw} x[n, c, i*sh + kh, j*sw + kw] / (KH*KW)
          dx[n, c, i*sh + kh, j*sw + kw] += dout[n, c, i, j] / (KH*KW)

Ties go to the LAST maximum in row-major window order (the layer notes: "when
we have multiple max values that are equal we take the index of the last one
in the window"); a NaN counts as larger than any number, and of several NaNs
the last wins too. Put as a running max over the window in row-major order:
v takes over when v >= max or v is a NaN, so a number never displaces a NaN.
The vectorised pass gets it from np.argmax (first max, first NaN) over the
reversed window, the naive loop from that running max, and the Cython kernel
uses the same rule, so every backend picks the same element. Overlapping windows
(stride < kernel) accumulate in dx. The backward passes ignore an argmax outside
[0, H*W), as the Cython kernels do.
"""
import numpy as np

from cnn._checks import check_argmax, check_dout, check_pool2d


def _window_slices(KH, KW, stride, Hout, Wout):
    """Yield (kh, kw, (rows, cols)): the x elements at offset (kh, kw) of every window."""
    sh, sw = stride
    for kh in range(KH):
        for kw in range(KW):
            yield kh, kw, (slice(kh, kh + sh * (Hout - 1) + 1, sh),
                           slice(kw, kw + sw * (Wout - 1) + 1, sw))


def _check_max_cache(dout, cache):
    x, kernel, stride, argmax = cache
    x, kernel, stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    shape = x.shape[:2] + (Hout, Wout)
    dout = check_dout(dout, shape, x.dtype)
    return x, kernel, stride, check_argmax(argmax, shape), dout


def maxpool2d_forward(x, kernel=2, stride=None, *, threads=None):
    """x (N, C, H, W) -> out (N, C, H', W'), cache (x, kernel, stride, argmax)."""
    x, (KH, KW), stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    windows = np.empty((KH * KW, N, C, Hout, Wout), dtype=x.dtype)
    for kh, kw, (rows, cols) in _window_slices(KH, KW, stride, Hout, Wout):
        windows[kh * KW + kw] = x[:, :, rows, cols]
    # np.argmax takes the first max (a NaN first of all); over the reversed
    # window axis that is the last max (the last NaN) in row-major order.
    k = (KH * KW - 1) - windows[::-1].argmax(axis=0)
    out = np.take_along_axis(windows, k[None], axis=0)[0]
    sh, sw = stride
    i = np.arange(Hout, dtype=np.int64)[:, None]
    j = np.arange(Wout, dtype=np.int64)[None, :]
    argmax = (i * sh + k // KW) * W + (j * sw + k % KW)
    return out, (x, (KH, KW), stride, argmax.astype(np.int64, copy=False))


def maxpool2d_backward(dout, cache, *, threads=None):
    """dout (N, C, H', W') -> dx (N, C, H, W): each gradient goes to its window's max."""
    x, kernel, stride, argmax, dout = _check_max_cache(dout, cache)
    N, C, H, W = x.shape
    plane = H * W
    idx = argmax.reshape(N * C, -1)
    g = dout.reshape(N * C, -1)
    valid = (idx >= 0) & (idx < plane)
    flat = idx + (np.arange(N * C, dtype=np.int64) * plane)[:, None]
    dx = np.zeros(N * C * plane, dtype=x.dtype)
    # add.at adds in index order, in x's dtype: the Cython kernel's rounding.
    np.add.at(dx, flat[valid], g[valid])
    return dx.reshape(x.shape)


def avgpool2d_forward(x, kernel=2, stride=None, *, threads=None):
    """x (N, C, H, W) -> out (N, C, H', W'), cache (x, kernel, stride)."""
    x, (KH, KW), stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    out = None
    # Summed in row-major window order, then divided: the Cython kernel's order.
    for _kh, _kw, (rows, cols) in _window_slices(KH, KW, stride, Hout, Wout):
        if out is None:
            out = x[:, :, rows, cols].copy()
        else:
            out += x[:, :, rows, cols]
    out /= x.dtype.type(KH * KW)
    return out, (x, (KH, KW), stride)


def avgpool2d_backward(dout, cache, *, threads=None):
    """dout (N, C, H', W') -> dx (N, C, H, W): each gradient spread evenly on its window."""
    x, kernel, stride = cache
    x, (KH, KW), stride, (Hout, Wout) = check_pool2d(x, kernel, stride)
    dout = check_dout(dout, x.shape[:2] + (Hout, Wout), x.dtype)
    g = dout * (x.dtype.type(1) / x.dtype.type(KH * KW))
    dx = np.zeros_like(x)
    for _kh, _kw, (rows, cols) in _window_slices(KH, KW, stride, Hout, Wout):
        dx[:, :, rows, cols] += g
    return dx


def _beats(v, best):
    """v becomes the running max: v >= best (the last of equal maxima wins) or v is
    a NaN (above any number; the last NaN wins). A number never displaces a NaN,
    since every comparison with a NaN is false."""
    return v >= best or v != v


def maxpool2d_forward_naive(x, kernel=2, stride=None, *, threads=None):
    """The loop formula, one window at a time, its running max in row-major order."""
    x, (KH, KW), (sh, sw), (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    out = np.empty((N, C, Hout, Wout), dtype=x.dtype)
    argmax = np.empty((N, C, Hout, Wout), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Hout):
                for j in range(Wout):
                    window = x[n, c, i * sh:i * sh + KH, j * sw:j * sw + KW]
                    best, at = window[0, 0], (0, 0)
                    for kh in range(KH):
                        for kw in range(KW):
                            if _beats(window[kh, kw], best):  # last max wins
                                best, at = window[kh, kw], (kh, kw)
                    kh, kw = at
                    out[n, c, i, j] = best
                    argmax[n, c, i, j] = (i * sh + kh) * W + (j * sw + kw)
    return out, (x, (KH, KW), (sh, sw), argmax)


def maxpool2d_backward_naive(dout, cache, *, threads=None):
    """Each output's gradient added to the input element that was its max."""
    x, kernel, stride, argmax, dout = _check_max_cache(dout, cache)
    N, C, H, W = x.shape
    _, _, Hout, Wout = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(Hout):
                for j in range(Wout):
                    k = int(argmax[n, c, i, j])
                    if 0 <= k < H * W:
                        r, s = divmod(k, W)
                        dx[n, c, r, s] += dout[n, c, i, j]
    return dx


def avgpool2d_forward_naive(x, kernel=2, stride=None, *, threads=None):
    """The loop formula, one window at a time."""
    x, (KH, KW), (sh, sw), (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    out = np.empty((N, C, Hout, Wout), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(Hout):
                for j in range(Wout):
                    window = x[n, c, i * sh:i * sh + KH, j * sw:j * sw + KW]
                    out[n, c, i, j] = window.sum() / (KH * KW)
    return out, (x, (KH, KW), (sh, sw))


def avgpool2d_backward_naive(dout, cache, *, threads=None):
    """Each output's gradient divided evenly over its window."""
    x, kernel, stride = cache
    x, (KH, KW), (sh, sw), (Hout, Wout) = check_pool2d(x, kernel, stride)
    N, C, H, W = x.shape
    dout = check_dout(dout, (N, C, Hout, Wout), x.dtype)
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(Hout):
                for j in range(Wout):
                    dx[n, c, i * sh:i * sh + KH, j * sw:j * sw + KW] += \
                        dout[n, c, i, j] / (KH * KW)
    return dx
