"""Sequential models: a stack of layers with forward, backward and prediction.

Training code calls ``forward(x, training=True)`` on normalised batches
(N, C, H, W) in the parameters' dtype (float32 unless built in float64) and
``backward(dlogits)``. Users call ``predict`` and
``predict_proba`` on raw pixels; the model applies the normalisation it was
trained with (``normalization``, saved in the weights file).
"""
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike

from cnn.backends import get_backend

if TYPE_CHECKING:
    from cnn.plan import InferencePlan
from cnn.folding import ConvBatchNorm
from cnn.layers import (
    BatchNorm2D,
    Conv2D,
    ConvReLUMaxPool,
    Dense,
    DenseReLU,
    Layer,
    MaxPool2D,
    ReLU,
    layer_from_config,
)

# One entry of Sequential.parameters(): (key, param, grads, name).
Parameter = tuple[str, np.ndarray, dict[str, np.ndarray], str]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_state_shapes(expected: Mapping[str, tuple], stored: Mapping[str, tuple]) -> None:
    """ValueError unless ``stored`` has exactly the names of ``expected``, each with
    its shape (weights files are checked with this before any array is allocated,
    cnn.io, and again when the arrays are copied in, load_state)."""
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match the architecture: missing {missing}, "
                         f"unexpected {extra}")
    for key, shape in expected.items():
        if tuple(stored[key]) != tuple(shape):
            raise ValueError(f"weight {key} has shape {tuple(stored[key])}, the architecture "
                             f"needs {tuple(shape)}")


class Sequential:
    """Layers run in order on (N, C, H, W) batches of ``input_shape`` (C, H, W),
    ending in one score per class; ``build`` before use."""

    # Set by cnn.io.load_model: the file's training summary, its whole record, its path.
    summary_info: dict[str, Any]
    meta: dict[str, Any]
    path: str

    def __init__(self, layers: Iterable[Layer], input_shape: Sequence[int] = (1, 28, 28),
                 class_names: Sequence[str] | None = None, name: str = "model") -> None:
        self.layers = list(layers)
        self.input_shape: tuple[int, ...] = tuple(int(s) for s in input_shape)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.name = name
        # {"mean": float, "std": float} (lists per channel for colour) once trained
        self.normalization: dict[str, Any] | None = None
        self.backend: str | None = None
        self.threads: int | None = None
        self.rng: np.random.Generator | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None      # the parameters' float dtype, set by build
        self.fuse = True            # run Conv2D -> ReLU -> MaxPool2D as one op
        self._steps: tuple[tuple[bool, tuple[int, ...]], list[Any]] | None = None

    # -- construction ---------------------------------------------------------
    def build(self, seed: int = 0, dtype: DTypeLike = np.float32, backend: str | None = None,
              threads: int | None = None) -> "Sequential":
        """Create every parameter (He/Glorot init from ``seed``), check that the
        shapes chain from ``input_shape`` to one output per class, and choose the
        backend (``set_backend``). Returns the model itself."""
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.build(shape, self.rng, np.dtype(dtype))
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer!r}): {exc}") from None
            if hasattr(layer, "rng"):
                layer.rng = self.rng
        if len(shape) != 1:
            raise ValueError(f"the model must end in flat class scores, but its output shape "
                             f"is {shape}: end with Flatten/Dense")
        if self.class_names is not None and shape[0] != len(self.class_names):
            raise ValueError(f"the model outputs {shape[0]} scores but there are "
                             f"{len(self.class_names)} classes")
        self.output_shape = shape
        self.set_backend(backend, threads)
        return self

    def set_backend(self, backend: str | None = None,
                    threads: int | None = None) -> "Sequential":
        """Run the layers on ``backend`` (name or None for the default) with ``threads``.

        ``self.backend`` becomes the backend's name (``cython``, ``python`` or
        ``naive``). Returns the model itself."""
        ops = get_backend(backend)
        self.backend = ops.__name__.rsplit(".", 1)[-1]   # a backend module is named as its backend
        self.threads = threads
        for layer in self.layers:
            layer.ops = ops
            layer.threads = threads
        self._steps = None
        return self

    def steps(self) -> list[Any]:
        """The layers as they run: every Conv2D -> ReLU -> MaxPool2D triple is one
        fused step (ConvReLUMaxPool) when ``fuse`` is on, and so is every Conv2D ->
        BatchNorm2D with the ReLU and MaxPool2D that follow it (ConvBatchNorm: the
        batch norm folded into the convolution at inference, cnn.folding), and every
        Dense -> ReLU (DenseReLU: the ReLU as the GEMM's epilogue at inference); the
        rest one step each. The fused ops compute what their layers do (their tests check
        that on every backend) in one pass over memory instead of several."""
        key = (self.fuse, tuple(map(id, self.layers)))
        if self._steps is None or self._steps[0] != key:
            steps: list[Any] = []
            i, layers = 0, self.layers
            while i < len(layers):
                if (self.fuse and i + 2 < len(layers)
                        and type(layers[i]) is Conv2D and type(layers[i + 1]) is ReLU
                        and type(layers[i + 2]) is MaxPool2D):
                    steps.append(ConvReLUMaxPool(*layers[i:i + 3]))
                    i += 3
                elif (self.fuse and i + 1 < len(layers) and type(layers[i]) is Conv2D
                        and type(layers[i + 1]) is BatchNorm2D):
                    # with the ReLU and max pooling that follow, if they do
                    n = 2
                    for kind in (ReLU, MaxPool2D):
                        if i + n < len(layers) and type(layers[i + n]) is kind:
                            n += 1
                        else:
                            break
                    steps.append(ConvBatchNorm(*layers[i:i + n]))
                    i += n
                elif (self.fuse and i + 1 < len(layers) and type(layers[i]) is Dense
                        and type(layers[i + 1]) is ReLU):
                    steps.append(DenseReLU(*layers[i:i + 2]))
                    i += 2
                else:
                    steps.append(layers[i])
                    i += 1
            self._steps = (key, steps)
        return self._steps[1]

    @property
    def num_classes(self) -> int:
        if self.output_shape is None:
            raise RuntimeError("the model is not built: call build() or use cnn.load_model()")
        return self.output_shape[0]

    def config(self) -> dict[str, Any]:
        return {"layers": [layer.config() for layer in self.layers],
                "input_shape": list(self.input_shape), "name": self.name}

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    class_names: Sequence[str] | None = None) -> "Sequential":
        return cls([layer_from_config(c) for c in config["layers"]],
                   input_shape=config["input_shape"], class_names=class_names,
                   name=config.get("name", "model"))

    # -- training -------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False,
                need_cache: bool = True) -> np.ndarray:
        """Logits (N, K) for a normalised batch. need_cache=False (inference only,
        no backward to follow) lets fused steps skip keeping what backward needs."""
        for step in self.steps():
            if type(step) in (ConvReLUMaxPool, ConvBatchNorm, DenseReLU):
                x = step.forward(x, training, need_cache)
            else:
                x = step.forward(x, training)
        return x

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Fill every layer's grads from dL/dlogits; return dL/dx (None when
        ``input_grad`` is False, which lets the first layer skip that work)."""
        steps = self.steps()
        for i in range(len(steps) - 1, -1, -1):
            dout = steps[i].backward(dout, need_dx=input_grad or i > 0)
        return dout if input_grad else None

    def parameters(self) -> list[Parameter]:
        """[(key, param, grads, name)], one per parameter, in a fixed order.

        ``key`` is 'LAYER.NAME' (as in ``state()``), ``param`` the array the
        optimizer updates in place, ``grads`` its layer's dict of gradients and
        ``name`` the parameter's name in it: ``grads[name]`` is param's gradient
        once ``backward`` has run (looked up then, since backward replaces it)."""
        out = []
        for i, layer in enumerate(self.layers):
            for name, value in layer.params.items():
                out.append((f"{i}.{name}", value, layer.grads, name))
        return out

    def state(self) -> dict[str, np.ndarray]:
        """Every array to save: parameters and buffers, keyed 'LAYER.NAME'."""
        arrays = {}
        for i, layer in enumerate(self.layers):
            for name, value in list(layer.params.items()) + list(layer.buffers.items()):
                arrays[f"{i}.{name}"] = value
        return arrays

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy saved arrays into the built model, checking names and shapes."""
        expected = self.state()
        check_state_shapes({k: v.shape for k, v in expected.items()},
                           {k: np.shape(v) for k, v in arrays.items()})
        for key, target in expected.items():
            target[...] = arrays[key]

    def num_params(self) -> int:
        return int(sum(p.size for _, p, _, _ in self.parameters()))

    def summary(self) -> str:
        rows = [("layer", "output shape", "params")]
        shape = self.input_shape
        rows.append(("input", str(shape), "0"))
        for i, layer in enumerate(self.layers):
            count = sum(p.size for p in layer.params.values())
            rows.append((f"{i}: {layer!r}", str(layer.output_shape), f"{count:,}"))
        width = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:>{width[2]}}" for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total parameters: {self.num_params():,}")
        return "\n".join(lines)

    # -- inference --------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels -> normalised (N, C, H, W) in the model's dtype (float32 by default).

        Accepts uint8 0-255 or float 0-1, shaped (N, C, H, W) or, for one
        channel, (N, H, W), or for several channels-last (N, H, W, C) as
        Pillow, Keras and ``cnn.images.decode_images`` give colour images
        (a shape that reads both ways is taken as channels-first).
        """
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
        C, H, W = self.input_shape
        if x.ndim == 3 and C == 1:
            x = x[:, None]
        elif x.ndim == 4 and C > 1 and x.shape[1:] != (C, H, W) and x.shape[1:] == (H, W, C):
            x = x.transpose(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1:] != (C, H, W):
            other = f" or (N, {H}, {W})" if C == 1 else f" or (N, {H}, {W}, {C})"
            raise ValueError(f"x must have shape (N, {C}, {H}, {W}){other}, got {x.shape}")
        # The kernels need the input in the parameters' dtype (float32 unless
        # the model was built or saved in float64).
        ftype = (np.dtype(np.float32) if self.dtype is None else self.dtype).type
        if x.dtype == np.uint8:
            x = x.astype(ftype) / ftype(255.0)
        elif x.dtype.kind == "f":
            if x.size and not np.isfinite(x).all():
                raise ValueError("x holds NaN or infinite values")
            if x.size and (x.min() < 0 or x.max() > 1):
                raise ValueError(f"float pixels must lie in [0, 1] (uint8 for 0-255), got "
                                 f"values in [{x.min()}, {x.max()}]")
            x = x.astype(ftype)
        else:
            raise TypeError(f"x must be uint8 (0-255) or float (0-1) pixels, got {x.dtype}")
        if self.normalization is not None:
            mean, std = self.normalization["mean"], self.normalization["std"]
            if isinstance(mean, (list, tuple)):   # per channel (colour models)
                mean = np.asarray(mean, ftype).reshape(-1, 1, 1)
                std = np.asarray(std, ftype).reshape(-1, 1, 1)
            else:
                mean, std = ftype(mean), ftype(std)
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=ftype)

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class scores (N, K) for normalised input, computed in batches."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(x) == 0:
            return np.zeros((0, self.num_classes),
                            np.float32 if self.dtype is None else self.dtype)
        return np.concatenate([self.forward(x[i:i + batch_size], training=False,
                                            need_cache=False)
                               for i in range(0, len(x), batch_size)])

    def compile(self, threads: int | None = None, copy: bool = True) -> "InferencePlan":
        """This model prepared for inference (cnn.plan.InferencePlan): weights
        copied, kernels' geometry, thread split and workspaces worked out once;
        ``plan(x)`` equals ``forward(x, training=False)``. ``threads``: kernel
        threads (None: the model's). ``copy=False``: the plan uses this model's
        own arrays and layers instead of a snapshot, for a model that will not
        change (a served one), which saves a second copy of every weight."""
        from cnn.plan import InferencePlan
        return InferencePlan(self, threads, copy=copy)

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, K) for raw pixels."""
        return softmax(self.logits(self.prepare(x), batch_size))

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class indices (N,) for raw pixels."""
        return self.predict_proba(x, batch_size).argmax(axis=1)
