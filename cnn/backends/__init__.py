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
    dense_forward(x, w, b, *, relu=False, threads=None) -> (out, cache)
        x (N, D), w (M, D), b (M,) -> out (N, M) = x @ w.T + b; relu=True: ReLU
        of it and cache None (Dense -> ReLU as one op, inference)
    dense_backward(dout, cache, *, threads=None) -> (dx, dw, db)
    softmax_cross_entropy(logits, labels, *, threads=None) -> (loss, dlogits)
        logits (N, K), labels (N,) ints in [0, K); loss is the batch mean, a
        Python float
    batchnorm2d_forward(x, gamma, beta, running_mean, running_var, *,
                        training=True, momentum=0.1, eps=1e-5, threads=None)
        -> (out, cache); x (N, C, H, W), the rest (C,); in training mode the
        running statistics are updated in place:
        running = (1 - momentum) * running + momentum * batch_stat
        (the variance with the unbiased N*H*W/(N*H*W-1) correction, as PyTorch)
    batchnorm2d_backward(dout, cache, *, threads=None) -> (dx, dgamma, dbeta)

Inputs are float32 or float64 (all of one dtype), output arrays have that dtype. A
cache is only meaningful to the backward of the backend that made it. Python
backends accept ``threads`` and ignore it.

The backend in use is chosen by ``get_backend(name)``, else the ``CNN_BACKEND``
environment variable, else ``cython`` if built, else ``python``.

That fallback is never silent: a source install that did not compile the
kernels runs about 2x slower. Importing cnn warns (KernelsNotBuiltWarning, once)
when a compiled module is missing and no NumPy backend was chosen through
``CNN_BACKEND``; ``fallback_note()`` is the line the command-line tools print;
``available()`` says which backends can run here.
"""
import importlib
import importlib.util
import os
import warnings
from types import ModuleType

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
_MODULES = {"cython": "cnn.backends.cython", "python": "cnn.backends.python",
            "naive": "cnn.backends.naive"}


# The compiled modules of pyx/, one per .pyx (what cnn.backends.cython imports, and
# the optimizers' updates, cnn.optim).
KERNEL_MODULES = ("cnn._conv", "cnn._conv_relu_pool", "cnn._pool", "cnn._relu",
                  "cnn._dense", "cnn._softmax", "cnn._batchnorm", "cnn._winograd",
                  "cnn._optim")
BUILD_HINT = "build them with `pip install -e .` in the project folder"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot be used here (e.g. Cython kernels not built)."""


class KernelsNotBuiltWarning(RuntimeWarning):
    """The compiled kernels are missing: the default backend is the slower ``python``."""


def cython_available() -> bool:
    try:
        importlib.import_module(_MODULES["cython"])
    except BackendUnavailable:
        return False
    return True


def available() -> dict[str, bool]:
    """Which backends can run here: ``{"cython": bool, "python": True, "naive": True}``.

    ``cython`` is True when its compiled kernels import (built for this Python).
    """
    return {"cython": cython_available(), "python": True, "naive": True}


def missing_kernels() -> list[str]:
    """The compiled modules that cannot be found (without loading any: loading
    starts OpenMP, which must read its settings later, see cnn/__init__)."""
    missing = []
    for name in KERNEL_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):   # an import hook refused it
            found = False
        if not found:
            missing.append(name)
    return missing


def fallback_note(name: str | None = None) -> str | None:
    """None, unless backend ``name`` (None: the default) is the ``python`` fallback
    for kernels that are not built; then one line saying so and how to build them."""
    if name is None:
        name = os.environ.get("CNN_BACKEND") or None
    if name is not None:        # chosen: cython raises when not built, the others are wanted
        return None
    missing = missing_kernels()
    if missing:
        why = f"{', '.join(missing)} not found"
    elif cython_available():
        return None
    else:                       # found but failed to load (e.g. a missing shared library)
        why = "failed to load"
    return (f"warning: the compiled kernels are not built ({why}): using the python "
            f"backend (NumPy, about 2x slower); {BUILD_HINT}")


def _warn_fallback(note):
    # Once a process: at import, or at the first default get_backend() if the
    # modules were found but do not load.
    global _warned
    if note and not _warned:
        _warned = True
        warnings.warn(note.removeprefix("warning: "), KernelsNotBuiltWarning, stacklevel=3)


_warned = False


def get_backend(name: str | None = None) -> ModuleType:
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
        if cython_available():
            return importlib.import_module(_MODULES["cython"])
        _warn_fallback(fallback_note())
        return importlib.import_module(_MODULES["python"])
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return importlib.import_module(_MODULES[name.lower()])


_warn_fallback(fallback_note() if missing_kernels() else None)
