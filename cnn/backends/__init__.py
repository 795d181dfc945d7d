"""Kernel backends: the same ops, three implementations.

- ``cython``: the compiled kernels of pyx/ (the default when they are built).
- ``python``: NumPy, vectorised with im2col/col2im; a drop-in twin of ``cython``.
- ``naive``: NumPy with the direct loop formulas of the reference notes; slow,
  for small shapes and for checking the other two.

Every backend module exposes the same functions, in the CS231n style:

    conv2d_forward(x, w, b, stride=1, pad=0, *, threads=None) -> (out, cache)
        x (N, C, H, W), w (F, C, KH, KW), b (F,) -> out (N, F, H', W'),
        H' = (H + 2*pad_h - KH) // stride_h + 1; stride and pad: int or (h, w)
    conv2d_backward(dout, cache, *, threads=None, need_dx=True) -> (dx, dw, db)
        need_dx=False skips the input gradient and returns dx None (a first layer)
    conv2d_relu_maxpool2d_forward(x, w, b, stride=1, pad=0, pool_kernel=2,
                                  pool_stride=None, *, threads=None, need_cache=True)
        -> (out, cache); maxpool2d(relu(conv2d(x, ...))) in one op (the cython
        kernel fuses the three); need_cache=False (inference) returns cache None
    conv2d_relu_maxpool2d_backward(dout, cache, *, threads=None, need_dx=True)
        -> (dx, dw, db)
    maxpool2d_forward(x, kernel=2, stride=None, *, threads=None) -> (out, cache)
    maxpool2d_backward(dout, cache, *, threads=None) -> dx
    avgpool2d_forward(x, kernel=2, stride=None, *, threads=None) -> (out, cache)
    avgpool2d_backward(dout, cache, *, threads=None) -> dx
        x (N, C, H, W) -> out (N, C, H', W'), H' = (H - KH) // stride_h + 1;
        stride None means stride = kernel
    relu_forward(x, *, threads=None) -> (out, cache)          any shape
    relu_backward(dout, cache, *, threads=None) -> dx
    dense_forward(x, w, b, *, threads=None) -> (out, cache)
        x (N, D), w (M, D), b (M,) -> out (N, M) = x @ w.T + b
    dense_backward(dout, cache, *, threads=None) -> (dx, dw, db)
    softmax_cross_entropy(logits, labels, *, threads=None) -> (loss, dlogits)
        logits (N, K), labels (N,) ints in [0, K); loss is the batch mean
    batchnorm2d_forward(x, gamma, beta, running_mean, running_var, *,
                        training=True, momentum=0.1, eps=1e-5, threads=None)
        -> (out, cache); x (N, C, H, W), the rest (C,); in training mode the
        running statistics are updated in place:
        running = (1 - momentum) * running + momentum * batch_stat
        (the variance with the unbiased N*H*W/(N*H*W-1) correction, as PyTorch)
    batchnorm2d_backward(dout, cache, *, threads=None) -> (dx, dgamma, dbeta)

Inputs are float32 or float64 (all of one dtype), outputs have that dtype. A
cache is only meaningful to the backward of the backend that made it. Python
backends accept ``threads`` and ignore it.

The backend in use is chosen by ``get_backend(name)``, else the ``CNN_BACKEND``
environment variable, else ``cython`` if built, else ``python``.
"""
import importlib
import os

BACKENDS = ("cython", "python", "naive")
OPS = (
    "conv2d_forward", "conv2d_backward",
    "conv2d_relu_maxpool2d_forward", "conv2d_relu_maxpool2d_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "relu_forward", "relu_backward",
    "dense_forward", "dense_backward",
    "softmax_cross_entropy",
    "batchnorm2d_forward", "batchnorm2d_backward",
)
_MODULES = {"cython": "cnn.backends.cython", "python": "cnn.backends.numpy_im2col",
            "naive": "cnn.backends.naive"}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be used here (e.g. Cython kernels not built)."""


def cython_available():
    try:
        importlib.import_module(_MODULES["cython"])
    except BackendUnavailable:
        return False
    return True


def get_backend(name=None):
    """The backend module called ``name`` (``cython``, ``python`` or ``naive``).

    None means ``CNN_BACKEND`` from the environment, else ``cython`` when its
    extensions are built, else ``python``. Asking for ``cython`` explicitly
    when it is not built raises BackendUnavailable rather than falling back.
    """
    source = "backend"
    if name is None:
        name = os.environ.get("CNN_BACKEND") or None
        source = "CNN_BACKEND"
    if name is None:
        return importlib.import_module(
            _MODULES["cython" if cython_available() else "python"])
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return importlib.import_module(_MODULES[name.lower()])
