"""dense (fully connected) in NumPy: one matrix product per batch, and the
per-sample loop formula of the reference notes.

w is laid out (out, in) like conv's (F, C, KH, KW), so for each sample n

    out[n] = w @ x[n] + b                       a matrix-vector product

and its gradients

    dx[n] = dout[n] @ w                          a vector-matrix product
    dw    = sum_n outer(dout[n], x[n])           one outer product per sample
    db    = sum_n dout[n]

The batch version stacks the samples as rows: out = x @ w.T + b,
dx = dout @ w, dw = dout.T @ x, db = dout.sum(0).
"""
import numpy as np

from cnn._checks import check_dense, check_dout


def dense_forward(x, w, b, *, relu=False, threads=None):
    """x (N, D), w (M, D), b (M,) -> out (N, M) = x @ w.T + b, cache. relu=True:
    relu(out) and cache None (inference: Dense -> ReLU as one op)."""
    x, w, b = check_dense(x, w, b)
    out = x @ w.T + b
    if relu:
        return _relu(out), None
    return out, (x, w, b)


def _relu(out):
    """ReLU as relu_forward computes it (a NaN stays NaN)."""
    return np.maximum(out, out.dtype.type(0))


def dense_backward(dout, cache, *, threads=None):
    """dout (N, M) -> dx (N, D), dw (M, D), db (M,)."""
    if cache is None:
        raise ValueError("no cache: the forward pass ran with relu=True (inference)")
    x, w, b = cache
    x, w, b = check_dense(x, w, b)
    dout = check_dout(dout, (x.shape[0], w.shape[0]), x.dtype)
    dx = dout @ w
    dw = dout.T @ x
    db = dout.sum(axis=0)
    return dx, dw, db


def dense_forward_naive(x, w, b, *, relu=False, threads=None):
    """The loop formula: one matrix-vector product per sample."""
    x, w, b = check_dense(x, w, b)
    N, M = x.shape[0], w.shape[0]
    out = np.empty((N, M), dtype=x.dtype)
    for n in range(N):
        out[n] = w @ x[n] + b
    if relu:
        return _relu(out), None
    return out, (x, w, b)


def dense_backward_naive(dout, cache, *, threads=None):
    """Per sample: dx[n] = dout[n] @ w; dw and db summed over the samples."""
    if cache is None:
        raise ValueError("no cache: the forward pass ran with relu=True (inference)")
    x, w, b = cache
    x, w, b = check_dense(x, w, b)
    N = x.shape[0]
    dout = check_dout(dout, (N, w.shape[0]), x.dtype)
    dx = np.empty_like(x)
    dw = np.zeros_like(w)
    db = np.zeros_like(b)
    for n in range(N):
        dx[n] = dout[n] @ w
        dw += np.outer(dout[n], x[n])
        db += dout[n]
    return dx, dw, db
