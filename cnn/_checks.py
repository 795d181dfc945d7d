"""Argument validation shared by every backend.

Each op's inputs are checked here, in Python, before any kernel runs: the
Cython kernels index with bounds checks off, so they must only ever see arrays
whose shapes agree. A check returns C-contiguous arrays of one float dtype
(copying when needed) and normalised hyper-parameters, or raises a ValueError /
TypeError that names the argument and the shapes involved.
"""
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(a, name, ndim, dtype=None):
    """``a`` as a C-contiguous float32/float64 array with ``ndim`` dimensions.

    ``dtype`` (when given) is the dtype the other inputs of the op already have.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but the other inputs are {dtype}; "
                        f"convert them to one dtype")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    return np.ascontiguousarray(a)


def pair(value, name, minimum):
    """An int or a pair of ints as a (vertical, horizontal) tuple, each >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        v = operator.index(v)
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        out.append(v)
    return tuple(out)


def out_size(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


def check_blas_sizes(op, *sizes):
    """BLAS takes 32-bit ints: a matrix dimension past that would wrap around."""
    if max(sizes) >= 2**31:
        raise ValueError(f"{op} matrix dimension {max(sizes)} exceeds the BLAS int limit")


def check_dout(dout, expected_shape, dtype):
    """The upstream gradient must have exactly the shape the forward pass produced."""
    dout = as_float_array(dout, "dout", len(expected_shape), dtype)
    if dout.shape != tuple(expected_shape):
        raise ValueError(f"dout must have the forward output's shape {tuple(expected_shape)}, "
                         f"got {dout.shape}")
    return dout


def check_conv2d(x, w, b, stride, pad):
    """Validate conv2d_forward's inputs.

    Returns (x, w, b, (sh, sw), (ph, pw), (Hout, Wout)).
    """
    x = as_float_array(x, "x", 4)
    w = as_float_array(w, "w", 4, x.dtype)
    b = as_float_array(b, "b", 1, x.dtype)
    N, C, H, W = x.shape
    F, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError(f"channel mismatch: x has {C} channels (shape {x.shape}) but "
                         f"w expects {Cw} (shape {w.shape})")
    if b.shape[0] != F:
        raise ValueError(f"b must have one bias per filter: w has {F} filters (shape "
                         f"{w.shape}) but b has shape {b.shape}")
    stride = pair(stride, "stride", 1)
    pad = pair(pad, "pad", 0)
    if KH > H + 2 * pad[0] or KW > W + 2 * pad[1]:
        raise ValueError(f"kernel {KH}x{KW} (w shape {w.shape}) is larger than the padded "
                         f"input {H + 2 * pad[0]}x{W + 2 * pad[1]} (x shape {x.shape}, "
                         f"pad {pad})")
    Hout = out_size(H, KH, stride[0], pad[0])
    Wout = out_size(W, KW, stride[1], pad[1])
    return x, w, b, stride, pad, (Hout, Wout)


def check_pool2d(x, kernel, stride):
    """Validate a pooling forward's inputs (no padding).

    Returns (x, (KH, KW), (sh, sw), (Hout, Wout)); stride None means the kernel size.
    """
    x = as_float_array(x, "x", 4)
    kernel = pair(kernel, "kernel", 1)
    stride = kernel if stride is None else pair(stride, "stride", 1)
    N, C, H, W = x.shape
    if kernel[0] > H or kernel[1] > W:
        raise ValueError(f"pooling kernel {kernel[0]}x{kernel[1]} is larger than the input "
                         f"{H}x{W} (x shape {x.shape})")
    Hout = out_size(H, kernel[0], stride[0], 0)
    Wout = out_size(W, kernel[1], stride[1], 0)
    return x, kernel, stride, (Hout, Wout)


def check_conv_relu_pool(x, w, b, stride, pad, pool_kernel, pool_stride):
    """Validate conv2d_relu_maxpool2d_forward's inputs: conv2d's, then pooling's on
    the conv output.

    Returns (x, w, b, stride, pad, (Hc, Wc), pool_kernel, pool_stride, (Hp, Wp)).
    """
    x, w, b, stride, pad, (Hc, Wc) = check_conv2d(x, w, b, stride, pad)
    pool_kernel = pair(pool_kernel, "pool_kernel", 1)
    pool_stride = pool_kernel if pool_stride is None else pair(pool_stride, "pool_stride", 1)
    if pool_kernel[0] > Hc or pool_kernel[1] > Wc:
        raise ValueError(f"pooling kernel {pool_kernel[0]}x{pool_kernel[1]} is larger than the "
                         f"conv output {Hc}x{Wc} (x shape {x.shape}, w shape {w.shape})")
    Hp = out_size(Hc, pool_kernel[0], pool_stride[0], 0)
    Wp = out_size(Wc, pool_kernel[1], pool_stride[1], 0)
    return x, w, b, stride, pad, (Hc, Wc), pool_kernel, pool_stride, (Hp, Wp)


def check_elementwise(x):
    """Any-shape float array (relu)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    return as_float_array(x, "x", x.ndim)


def check_dense(x, w, b):
    """x (N, D), w (M, D), b (M,): out = x @ w.T + b, w laid out (out, in) like conv."""
    x = as_float_array(x, "x", 2)
    w = as_float_array(w, "w", 2, x.dtype)
    b = as_float_array(b, "b", 1, x.dtype)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"feature mismatch: x has {x.shape[1]} features (shape {x.shape}) "
                         f"but w (out, in) expects {w.shape[1]} (shape {w.shape})")
    if b.shape[0] != w.shape[0]:
        raise ValueError(f"b must have one bias per output: w has {w.shape[0]} outputs "
                         f"(shape {w.shape}) but b has shape {b.shape}")
    return x, w, b


def check_softmax_cross_entropy(logits, labels):
    """logits (N, K) float, labels (N,) integers in [0, K). Returns (logits, labels int64)."""
    logits = as_float_array(logits, "logits", 2)
    if not isinstance(labels, np.ndarray):
        labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits "
                         f"{logits.shape}, got {labels.shape}")
    K = logits.shape[1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= K:
        bad = lo if lo < 0 else hi
        raise ValueError(f"labels must lie in [0, {K}) for logits with {K} classes, "
                         f"found {bad}")
    return logits, np.ascontiguousarray(labels, dtype=np.int64)


def check_batchnorm2d(x, gamma, beta, running_mean, running_var, momentum, eps):
    """x (N, C, H, W); gamma, beta, running_mean, running_var (C,) of x's dtype.

    The running statistics are updated in place, so they must be writable and
    contiguous already: a silent copy would drop the update.
    """
    x = as_float_array(x, "x", 4)
    C = x.shape[1]
    params = []
    for name, p in (("gamma", gamma), ("beta", beta)):
        p = as_float_array(p, name, 1, x.dtype)
        if p.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},) for x {x.shape}, got {p.shape}")
        params.append(p)
    for name, p in (("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(p).__name__}")
        if p.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {p.dtype} but x is {x.dtype}")
        if p.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},) for x {x.shape}, got {p.shape}")
        if not (p.flags.c_contiguous and p.flags.writeable):
            raise ValueError(f"{name} must be a writable contiguous array: it is updated "
                             f"in place")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) \
            or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    return x, params[0], params[1], float(momentum), float(eps)


def check_batchnorm2d_cache(cache):
    """Unpack and re-validate a batchnorm2d cache: (x, gamma, mean, inv_std, training)."""
    if not isinstance(cache, tuple) or len(cache) != 5:
        raise ValueError("cache must be the (x, gamma, mean, inv_std, training) tuple "
                         "returned by batchnorm2d_forward")
    x, gamma, mean, inv_std, training = cache
    x = as_float_array(x, "cached x", 4)
    C = x.shape[1]
    gamma = as_float_array(gamma, "cached gamma", 1, x.dtype)
    mean = as_float_array(mean, "cached mean", 1, np.dtype(np.float64))
    inv_std = as_float_array(inv_std, "cached inv_std", 1, np.dtype(np.float64))
    for name, a in (("gamma", gamma), ("mean", mean), ("inv_std", inv_std)):
        if a.shape != (C,):
            raise ValueError(f"cached {name} must have shape ({C},) for x {x.shape}, "
                             f"got {a.shape}")
    return x, gamma, mean, inv_std, bool(training)


def check_argmax(argmax, shape):
    """The argmax array of a max-pool cache: int64 with the pooled output's shape."""
    if not isinstance(argmax, np.ndarray):
        raise TypeError(f"cache argmax must be a numpy array, got {type(argmax).__name__}")
    if argmax.dtype != np.int64:
        raise TypeError(f"cache argmax must be int64, got dtype {argmax.dtype}")
    if argmax.shape != tuple(shape):
        raise ValueError(f"cache argmax must have the pooled output's shape {tuple(shape)}, "
                         f"got {argmax.shape}")
    return np.ascontiguousarray(argmax)
