"""ReLU in NumPy: vectorised and the element-by-element formula.

    out = max(x, 0)                 (NaN propagates, as np.maximum)
    dx  = dout where x > 0 else 0   (the subgradient 0 at x == 0)

Any shape; the cache is x itself.
"""
import numpy as np

from cnn._checks import check_dout, check_elementwise


def relu_forward(x, *, threads=None):
    """x (any shape) -> out = max(x, 0), cache x."""
    x = check_elementwise(x)
    return np.maximum(x, x.dtype.type(0)), x


def relu_backward(dout, cache, *, threads=None):
    """dout (x's shape) -> dx = dout where x > 0, else 0."""
    x = check_elementwise(cache)
    dout = check_dout(dout, x.shape, x.dtype)
    return np.where(x > 0, dout, x.dtype.type(0))


def relu_forward_naive(x, *, threads=None):
    """One element at a time."""
    x = check_elementwise(x)
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        of[i] = 0 if v < 0 else v
    return out, x


def relu_backward_naive(dout, cache, *, threads=None):
    """One element at a time."""
    x = check_elementwise(cache)
    dout = check_dout(dout, x.shape, x.dtype)
    dx = np.empty_like(x)
    xf, df, gf = x.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    for i in range(xf.size):
        gf[i] = df[i] if xf[i] > 0 else 0
    return dx
