"""conv2d in NumPy: im2col/col2im (vectorised) and the direct loop formula.

Cross-correlation, NCHW, as in the reference notes:

    out[n, f, i, j] = b[f] + sum_{c, kh, kw} x_pad[n, c, i*sh + kh, j*sw + kw] * w[f, c, kh, kw]

and its gradients

    db[f]          = sum_{n, i, j} dout[n, f, i, j]
    dw[f, c, kh, kw] = sum_{n, i, j} dout[n, f, i, j] * x_pad[n, c, i*sh + kh, j*sw + kw]
    dx_pad[n, c, i*sh + kh, j*sw + kw] += dout[n, f, i, j] * w[f, c, kh, kw]
"""
import numpy as np

from cnn._checks import check_conv2d, check_dout


def im2col(x, KH, KW, stride, pad):
    """x (N, C, H, W) -> cols (C*KH*KW, N*H'*W').

    Row r = (c, kh, kw) in w's memory order, column q = (n, i, j): the patch
    under output pixel (i, j) of image n.
    """
    N, C, H, W = x.shape
    (sh, sw), (ph, pw) = stride, pad
    Hout = (H + 2 * ph - KH) // sh + 1
    Wout = (W + 2 * pw - KW) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((C, KH, KW, N, Hout, Wout), dtype=x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            patch = xp[:, :, kh:kh + sh * (Hout - 1) + 1:sh, kw:kw + sw * (Wout - 1) + 1:sw]
            cols[:, kh, kw] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(C * KH * KW, N * Hout * Wout)


def col2im(cols, x_shape, KH, KW, stride, pad):
    """The adjoint of im2col: add cols (C*KH*KW, N*H'*W') back into (N, C, H, W)."""
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = stride, pad
    Hout = (H + 2 * ph - KH) // sh + 1
    Wout = (W + 2 * pw - KW) // sw + 1
    cols = cols.reshape(C, KH, KW, N, Hout, Wout)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for kh in range(KH):
        for kw in range(KW):
            xp[:, :, kh:kh + sh * (Hout - 1) + 1:sh, kw:kw + sw * (Wout - 1) + 1:sw] += \
                cols[:, kh, kw].transpose(1, 0, 2, 3)
    return xp[:, :, ph:ph + H, pw:pw + W]


def conv2d_forward(x, w, b, stride=1, pad=0, *, threads=None):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) -> out (N, F, H', W'), cache."""
    x, w, b, stride, pad, (Hout, Wout) = check_conv2d(x, w, b, stride, pad)
    N = x.shape[0]
    F, C, KH, KW = w.shape
    cols = im2col(x, KH, KW, stride, pad)
    out = w.reshape(F, -1) @ cols + b[:, None]          # (F, N*H'*W')
    out = out.reshape(F, N, Hout, Wout).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(out), (x, w, b, stride, pad, cols)


def conv2d_backward(dout, cache, *, threads=None, need_dx=True):
    """dout (N, F, H', W') -> dx (N, C, H, W), dw (F, C, KH, KW), db (F,).

    need_dx=False skips the input gradient (dx is None).
    """
    x, w, b, stride, pad, cols = cache
    x, w, b, stride, pad, (Hout, Wout) = check_conv2d(x, w, b, stride, pad)
    F, C, KH, KW = w.shape
    dout = check_dout(dout, (x.shape[0], F, Hout, Wout), x.dtype)
    d2 = dout.transpose(1, 0, 2, 3).reshape(F, -1)      # (F, N*H'*W')
    db = d2.sum(axis=1)
    dw = (d2 @ cols.T).reshape(w.shape)
    if not need_dx:
        return None, dw, db
    dx = col2im(w.reshape(F, -1).T @ d2, x.shape, KH, KW, stride, pad)
    return np.ascontiguousarray(dx), dw, db


def conv2d_forward_naive(x, w, b, stride=1, pad=0, *, threads=None):
    """The loop formula, one output pixel at a time."""
    x, w, b, stride, pad, (Hout, Wout) = check_conv2d(x, w, b, stride, pad)
    (sh, sw), (ph, pw) = stride, pad
    N = x.shape[0]
    F, C, KH, KW = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.empty((N, F, Hout, Wout), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(Hout):
                for j in range(Wout):
                    window = xp[n, :, i * sh:i * sh + KH, j * sw:j * sw + KW]
                    out[n, f, i, j] = np.sum(window * w[f]) + b[f]
    return out, (x, w, b, stride, pad)


def conv2d_backward_naive(dout, cache, *, threads=None, need_dx=True):
    """Each output pixel's gradient sent back to the window and filter it used.

    need_dx=False skips the input gradient (dx is None).
    """
    x, w, b, stride, pad = cache
    x, w, b, stride, pad, (Hout, Wout) = check_conv2d(x, w, b, stride, pad)
    (sh, sw), (ph, pw) = stride, pad
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    dout = check_dout(dout, (N, F, Hout, Wout), x.dtype)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = dout.sum(axis=(0, 2, 3))
    for n in range(N):
        for f in range(F):
            for i in range(Hout):
                for j in range(Wout):
                    g = dout[n, f, i, j]
                    rows, cols = slice(i * sh, i * sh + KH), slice(j * sw, j * sw + KW)
                    dw[f] += g * xp[n, :, rows, cols]
                    dxp[n, :, rows, cols] += g * w[f]
    return (dxp[:, :, ph:ph + H, pw:pw + W].copy() if need_dx else None), dw, db
