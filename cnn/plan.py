"""An inference plan: a model prepared once, then forward passes that do only the work.

    plan = model.compile()            # or cnn.plan.InferencePlan(model, threads=...)
    logits = plan(x)                  # x normalised (N, C, H, W): model.forward(x, training=False)
    proba = plan.predict_proba(raw)   # raw pixels, as model.predict_proba

``model.forward`` validates every kernel's arguments, works out its thread split
and allocates its workspaces at every layer of every call, and keeps each
layer's last cache on the layer. At batch 1 that bookkeeping is most of the
time. Compiling does it once, as ONNX Runtime's MLAS prepares a convolution
before it runs it:

* the model is copied (rebuilt from its config, its state loaded): the plan is
  a snapshot of its weights,
  unaffected by later training (compile again to see new weights), and nothing
  it does touches the model's layers or their caches;
* every Conv2D -> ReLU -> MaxPool2D step, and every Conv2D -> BatchNorm2D -> ReLU
  -> MaxPool2D with the batch norm folded in (cnn.folding), becomes a
  ``ConvReLUPoolPlan`` (cnn._conv_relu_pool: geometry, the thread split for every
  batch size, per-thread workspaces) and, where cnn.winograd says Winograd pays,
  also keeps its transformed filters for batches of MIN_IMAGES or more;
* every Dense (and Dense -> ReLU) becomes a ``DensePlan`` (cnn._dense);
* Dropout is left out (the identity at inference) and Flatten is a reshape;
* any other step (a lone Conv2D, average pooling, ...) runs its layer's own
  inference forward, on the plan's copy of the model.

A call checks the input once, sets BLAS to one thread once (every kernel runs its
GEMMs single-threaded inside its own OpenMP loop) and makes one Python call per
step; the prepared kernels run without the GIL. No call's result depends on an
earlier call, so calls from several threads are safe (a prepared step whose
workspace is in use takes a fresh one); a step that runs its layer's own forward
leaves that layer's cache on the plan's copy, never read back. On the python and
naive backends every step is its layer's forward: the plan still works, with
nothing prepared.

The result equals ``model.forward(x, training=False)``: the same kernels in the
same order on the same numbers (tests/test_plan.py checks every architecture
and layer type, float32 and float64, thread counts 1, 2 and 4).
"""
from copy import deepcopy

import numpy as np

from cnn import winograd
from cnn._blas_threads import blas_threads
from cnn.folding import ConvBatchNorm
from cnn.layers import (
    ConvReLUMaxPool,
    Dense,
    DenseReLU,
    Dropout,
    Flatten,
    LayerGroup,
    MaxPool2D,
)


class ConvStep:
    """A fused conv -> relu -> maxpool step: the prepared im2col kernel, or Winograd
    F(2x2, 3x3) with filters transformed at compile time for batches of at least
    ``cnn.winograd.MIN_IMAGES`` when the layer fits it."""
    __slots__ = ("im2col", "winograd", "winograd_forward", "U", "b", "pad", "threads")

    def __init__(self, ops, conv, pool, w, b, input_shape, threads):
        self.im2col = ops.ConvReLUPoolPlan(w, b, input_shape, conv.stride, conv.pad,
                                           pool.kernel, pool.stride, threads=threads)
        self.winograd = winograd.layer_fits(conv, pool, tuple(input_shape), ops)
        self.winograd_forward = ops.winograd_conv2d_forward if self.winograd else None
        self.U = ops.winograd_filters(w, 2) if self.winograd else None
        self.b = np.array(b)
        self.pad = conv.pad[0]
        self.threads = threads

    def __call__(self, x):
        if self.winograd and winograd.enough_images(len(x)):
            return self.winograd_forward(x, self.U, self.b, self.pad, m=2, pool=True,
                                         threads=self.threads)
        return self.im2col.run(x)


def _flatten(x):
    return x.reshape(x.shape[0], x[0].size if len(x) else int(np.prod(x.shape[1:])))


class InferencePlan:
    """``model`` prepared for inference with ``threads`` kernel threads (None: the
    model's); see the module docstring. ``copy=False`` prepares the model itself,
    not a snapshot: no second copy of the weights, for a model nothing changes
    (the service's); the plan then sees in-place changes of the convolution and
    dense weights but not of what it derived from them (folded batch norms,
    Winograd filters), so compile again after training."""

    def __init__(self, model, threads=None, copy=True):
        if model.output_shape is None:
            raise RuntimeError("the model is not built: call build() or use cnn.load_model()")
        self.threads = model.threads if threads is None else threads
        if copy:
            self.model = _snapshot(model, self.threads)
        elif self.threads != model.threads:
            raise ValueError(f"copy=False runs the model's own layers, on its threads "
                             f"({model.threads}): threads={threads!r} needs copy=True")
        else:
            self.model = model
        self.input_shape = self.model.input_shape
        self.dtype = self.model.dtype or np.dtype(np.float32)
        self.steps = []            # one callable per step: x -> the step's output
        self.prepared = []         # (step name, "im2col+winograd" | "im2col" | "dense" | ...)
        ops = self.model.layers[0].ops
        shape = tuple(self.input_shape)
        for step in self.model.steps():
            run, kind = self._prepare(step, ops, shape)
            if run is not None:
                self.steps.append(run)
            self.prepared.append((repr(step), kind))
            shape = _step_output_shape(step)
        # One image through every step: the shapes chain, and first-call costs are paid.
        self(np.zeros((1,) + tuple(self.input_shape), dtype=self.dtype))

    def _prepare(self, step, ops, shape):
        """(callable or None, what it is) for one step of the model."""
        prepared_ops = hasattr(ops, "ConvReLUPoolPlan")
        if type(step) is Dropout:
            return None, "identity"
        if type(step) is Flatten:
            return _flatten, "reshape"
        if prepared_ops and type(step) is ConvReLUMaxPool:
            conv, _, pool = step.layers
            run = ConvStep(ops, conv, pool, conv.params["w"], conv.params["b"], shape,
                           self.threads)
            return run, "im2col+winograd" if run.winograd else "im2col"
        if (prepared_ops and type(step) is ConvBatchNorm and len(step.layers) == 4
                and type(step.layers[3]) is MaxPool2D):
            w, b = step.folded()
            run = ConvStep(ops, step.layers[0], step.layers[3], w, b, shape, self.threads)
            return run, ("folded batch norm, " + ("im2col+winograd" if run.winograd
                                                  else "im2col"))
        if prepared_ops and type(step) in (Dense, DenseReLU):
            dense = step if type(step) is Dense else step.layers[0]
            return ops.DensePlan(dense.params["w"], dense.params["b"],
                                 relu=type(step) is DenseReLU, threads=self.threads).run, \
                "dense" + ("+relu" if type(step) is DenseReLU else "")
        if isinstance(step, (LayerGroup, ConvReLUMaxPool)):
            return (lambda x, step=step: step.forward(x, False, False)), "layer forward"
        return (lambda x, step=step: step.forward(x, False)), "layer forward"

    def __call__(self, x):
        """Logits (N, K) of normalised input x (N, C, H, W) in the model's dtype."""
        if (not isinstance(x, np.ndarray) or x.dtype != self.dtype or x.ndim != 4
                or x.shape[1:] != tuple(self.input_shape)):
            raise ValueError(f"x must be a {self.dtype} array of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {np.shape(x)}")
        if len(x) == 0:
            return np.zeros((0, self.model.num_classes), dtype=self.dtype)
        with blas_threads(1):
            for run in self.steps:
                x = run(x)
        return x

    def logits(self, x, batch_size=256):
        """Class scores (N, K) for normalised input, ``batch_size`` images a pass
        (as ``Sequential.logits``)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(x) <= batch_size:
            return self(x)
        return np.concatenate([self(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def prepare(self, x):
        """Raw pixels -> normalised input, as ``Sequential.prepare``."""
        return self.model.prepare(x)

    def predict_proba(self, x, batch_size=256):
        """Class probabilities (N, K) for raw pixels."""
        from cnn.model import softmax
        return softmax(self.logits(self.prepare(x), batch_size))

    def predict(self, x, batch_size=256):
        """Class indices (N,) for raw pixels."""
        return self.predict_proba(x, batch_size).argmax(axis=1)

    def __repr__(self):
        lines = [f"InferencePlan({self.model.name!r}, threads={self.threads}, "
                 f"backend={self.model.backend})"]
        lines += [f"  {name}: {kind}" for name, kind in self.prepared]
        return "\n".join(lines)


def _snapshot(model, threads):
    """A copy of ``model`` with its own arrays: the same config, state,
    normalisation and class names, on the same backend with ``threads``."""
    twin = type(model).from_config(model.config(), class_names=model.class_names)
    twin.build(dtype=model.dtype or np.float32, backend=model.backend, threads=threads)
    twin.load_state(model.state())
    twin.normalization = deepcopy(model.normalization)
    twin.fuse = model.fuse
    for name, value in vars(model).items():    # what loading added: meta, path, ...
        if name not in vars(twin):
            try:
                value = deepcopy(value)
            except Exception:  # noqa: BLE001 - not copyable (a handle): shared, read-only here
                pass
            setattr(twin, name, value)
    return twin


def _step_output_shape(step):
    """Per-image output shape of a model step (a layer or a group of layers)."""
    last = step.layers[-1] if hasattr(step, "layers") else step
    return tuple(last.output_shape)
