"""Layers: each owns its parameters, their gradients and the cache of its last
forward pass, and calls the kernels of the model's backend.

Shapes: images are NCHW, features (N, D). ``build(input_shape, rng, dtype)``
takes the per-sample input shape (no batch axis), creates the parameters in
``dtype`` and returns the per-sample output shape. ``forward(x, training)``
returns the output and keeps what ``backward(dout)`` needs; ``backward`` fills
``grads`` and returns dx.
``backward(dout, need_dx=False)`` may skip dx and return None (Conv2D does:
the first layer of a network has no use for its input gradient); the other
layers return dx whatever ``need_dx`` says.
"""
import numbers

import numpy as np

from cnn import winograd
from cnn._checks import pair
from cnn.derived import Derived


class Layer:
    trainable = False

    def __init__(self):
        self.params = {}    # name -> array, updated in place by the optimizer
        self.grads = {}     # name -> array of the same shape, set by backward
        self.buffers = {}   # name -> array of state that is saved but not trained
        self.cache = None
        self.ops = None     # the backend module, set by the model
        self.threads = None
        self.input_shape = self.output_shape = None

    def build(self, input_shape, rng, dtype):
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self.compute_output_shape(self.input_shape))
        return self.output_shape

    def compute_output_shape(self, input_shape):
        return input_shape

    def config(self):
        """The constructor arguments, JSON-serialisable, with the layer's type."""
        return {"type": type(self).__name__}

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def he_normal(rng, shape, fan_in, dtype):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(rng, shape, fan_in, fan_out, dtype):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def _init(name, rng, shape, fan_in, fan_out, dtype):
    if name == "he":
        return he_normal(rng, shape, fan_in, dtype)
    if name == "glorot":
        return glorot_uniform(rng, shape, fan_in, fan_out, dtype)
    raise ValueError(f"init must be 'he' or 'glorot', got {name!r}")


def _check_init(name):
    # Checked at construction so that a bad config fails where it is read.
    if name not in ("he", "glorot"):
        raise ValueError(f"init must be 'he' or 'glorot', got {name!r}")
    return name


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Conv2D(Layer):
    """x (N, C, H, W) -> (N, filters, H', W'); weights w (filters, C, KH, KW), b (filters,)."""
    trainable = True

    def __init__(self, filters, kernel, stride=1, pad=0, init="he"):
        super().__init__()
        self.filters = _positive_int(filters, "filters")
        self.kernel = pair(kernel, "kernel", 1)
        self.stride = pair(stride, "stride", 1)
        self.pad = pair(pad, "pad", 0)
        self.init = _check_init(init)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D needs (C, H, W) input, got {input_shape}")
        C, H, W = input_shape
        (KH, KW), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        Hout, Wout = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
        if KH > H + 2 * ph or KW > W + 2 * pw:
            raise ValueError(f"Conv2D kernel {self.kernel} does not fit input {input_shape} "
                             f"with pad {self.pad}")
        return (self.filters, Hout, Wout)

    def build(self, input_shape, rng, dtype):
        out = super().build(input_shape, rng, dtype)
        C = input_shape[0]
        KH, KW = self.kernel
        shape = (self.filters, C, KH, KW)
        self.params = {"w": _init(self.init, rng, shape, C * KH * KW, self.filters * KH * KW,
                                  dtype),
                       "b": np.zeros(self.filters, dtype)}
        return out

    def forward(self, x, training=False):
        out, self.cache = self.ops.conv2d_forward(x, self.params["w"], self.params["b"],
                                                  stride=self.stride, pad=self.pad,
                                                  threads=self.threads)
        return out

    def backward(self, dout, need_dx=True):
        dx, self.grads["w"], self.grads["b"] = self.ops.conv2d_backward(
            dout, self.cache, threads=self.threads, need_dx=need_dx)
        return dx

    def config(self):
        return {"type": "Conv2D", "filters": self.filters, "kernel": list(self.kernel),
                "stride": list(self.stride), "pad": list(self.pad), "init": self.init}


class _Pool2D(Layer):
    def __init__(self, kernel=2, stride=None):
        super().__init__()
        self.kernel = pair(kernel, "kernel", 1)
        self.stride = self.kernel if stride is None else pair(stride, "stride", 1)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} needs (C, H, W) input, got {input_shape}")
        C, H, W = input_shape
        (KH, KW), (sh, sw) = self.kernel, self.stride
        if KH > H or KW > W:
            raise ValueError(f"{type(self).__name__} kernel {self.kernel} is larger than "
                             f"input {input_shape}")
        return (C, (H - KH) // sh + 1, (W - KW) // sw + 1)

    def config(self):
        return {"type": type(self).__name__, "kernel": list(self.kernel),
                "stride": list(self.stride)}


class MaxPool2D(_Pool2D):
    def forward(self, x, training=False):
        out, self.cache = self.ops.maxpool2d_forward(x, self.kernel, self.stride,
                                                     threads=self.threads)
        return out

    def backward(self, dout, need_dx=True):
        return self.ops.maxpool2d_backward(dout, self.cache, threads=self.threads)


class AvgPool2D(_Pool2D):
    def forward(self, x, training=False):
        out, self.cache = self.ops.avgpool2d_forward(x, self.kernel, self.stride,
                                                     threads=self.threads)
        return out

    def backward(self, dout, need_dx=True):
        return self.ops.avgpool2d_backward(dout, self.cache, threads=self.threads)


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): each channel's mean over H and W, for any H, W.

    Lets a network end in Dense for any input size (the Dense sees C features
    whatever the image size). One pass over memory, no kernel needed: NumPy.
    backward spreads dout / (H*W) evenly over the H x W cells.
    """

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"GlobalAvgPool2D needs (C, H, W) input, got {input_shape}")
        return (input_shape[0],)

    def forward(self, x, training=False):
        self.cache = x.shape
        return x.mean(axis=(2, 3), dtype=x.dtype)

    def backward(self, dout, need_dx=True):
        N, C, H, W = self.cache
        scale = dout.dtype.type(1.0 / (H * W))
        # A real array, not a broadcast view: the kernels below want contiguous input.
        return np.repeat((dout * scale).reshape(N * C, 1), H * W, axis=1).reshape(N, C, H, W)


class ReLU(Layer):
    def forward(self, x, training=False):
        out, self.cache = self.ops.relu_forward(x, threads=self.threads)
        return out

    def backward(self, dout, need_dx=True):
        return self.ops.relu_backward(dout, self.cache, threads=self.threads)


class ConvReLUMaxPool:
    """Conv2D -> ReLU -> MaxPool2D run as one op: the model's fast path for that
    common triple (see Sequential.steps). Not a layer of its own: the three
    layers keep their configs and parameters, and the Conv2D gets the grads;
    this object only holds the fused op's cache.
    """

    def __init__(self, conv, relu, pool):
        self.layers = (conv, relu, pool)
        self.cache = None
        self.winograd_filters = Derived()

    def forward(self, x, training=False, need_cache=True):
        conv, _, pool = self.layers
        if not need_cache:      # inference: Winograd or im2col, no cache (cnn.winograd)
            self.cache = None
            return winograd.conv_relu_pool_inference(conv, pool, x, conv.params["w"],
                                                     conv.params["b"], self.winograd_filters)
        out, self.cache = conv.ops.conv2d_relu_maxpool2d_forward(
            x, conv.params["w"], conv.params["b"], conv.stride, conv.pad, pool.kernel,
            pool.stride, threads=conv.threads, need_cache=need_cache)
        return out

    def backward(self, dout, need_dx=True):
        conv = self.layers[0]
        dx, conv.grads["w"], conv.grads["b"] = conv.ops.conv2d_relu_maxpool2d_backward(
            dout, self.cache, threads=conv.threads, need_dx=need_dx)
        return dx

    def __repr__(self):
        return " -> ".join(repr(layer) for layer in self.layers)


class LayerGroup:
    """Layers that run as one model step at inference (a subclass's ``forward``
    with need_cache=False); in training, and whenever a backward pass may
    follow, they run one by one (``forward_layers``), each keeping its cache,
    and ``backward`` goes back through them."""

    def __init__(self, *layers):
        self.layers = layers
        self._caches_valid = False    # the layers' caches are the last forward pass's

    def forward_layers(self, x, training):
        for layer in self.layers:
            x = layer.forward(x, training)
        self._caches_valid = True
        return x

    def backward(self, dout, need_dx=True):
        if not self._caches_valid:
            raise ValueError("no cache: the forward pass ran with need_cache=False (inference)")
        for i in range(len(self.layers) - 1, -1, -1):
            dout = self.layers[i].backward(dout, need_dx=need_dx or i > 0)
        return dout

    def __repr__(self):
        return " -> ".join(repr(layer) for layer in self.layers)


class DenseReLU(LayerGroup):
    """Dense -> ReLU as one step at inference: the ReLU as the GEMM's epilogue,
    no second call and no second pass."""

    def forward(self, x, training=False, need_cache=True):
        if training or need_cache:
            return self.forward_layers(x, training)
        self._caches_valid = False
        dense = self.layers[0]
        out, _ = dense.ops.dense_forward(x, dense.params["w"], dense.params["b"], relu=True,
                                         threads=dense.threads)
        return out


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), C-order, so Dense weights see (c, h, w) features."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout, need_dx=True):
        return dout.reshape(self.cache)


class Dense(Layer):
    """x (N, D) -> (N, units); weights w (units, D), b (units,)."""
    trainable = True

    def __init__(self, units, init="he"):
        super().__init__()
        self.units = _positive_int(units, "units")
        self.init = _check_init(init)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense needs flat (D,) input, got {input_shape}: add a Flatten")
        return (self.units,)

    def build(self, input_shape, rng, dtype):
        out = super().build(input_shape, rng, dtype)
        D = input_shape[0]
        self.params = {"w": _init(self.init, rng, (self.units, D), D, self.units, dtype),
                       "b": np.zeros(self.units, dtype)}
        return out

    def forward(self, x, training=False):
        out, self.cache = self.ops.dense_forward(x, self.params["w"], self.params["b"],
                                                 threads=self.threads)
        return out

    def backward(self, dout, need_dx=True):
        dx, self.grads["w"], self.grads["b"] = self.ops.dense_backward(
            dout, self.cache, threads=self.threads)
        return dx

    def config(self):
        return {"type": "Dense", "units": self.units, "init": self.init}


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability ``rate`` and
    scale the rest by 1/(1-rate); identity at inference. Draws from the model's RNG."""

    def __init__(self, rate=0.5):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.rng = None  # set by the model

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self.cache = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        self.cache = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate))
        return x * self.cache

    def backward(self, dout, need_dx=True):
        return dout if self.cache is None else dout * self.cache

    def config(self):
        return {"type": "Dropout", "rate": self.rate}


class BatchNorm2D(Layer):
    """Per-channel batch normalisation of (N, C, H, W); gamma, beta (C,) trained,
    running mean/var kept as buffers for inference."""
    trainable = True

    def __init__(self, momentum=0.1, eps=1e-5):
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"batch-norm momentum must be a number in [0, 1], got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"batch-norm eps must be a positive number, got {eps!r}")
        self.momentum = float(momentum)
        self.eps = float(eps)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"BatchNorm2D needs (C, H, W) input, got {input_shape}")
        return input_shape

    def build(self, input_shape, rng, dtype):
        out = super().build(input_shape, rng, dtype)
        C = input_shape[0]
        self.params = {"gamma": np.ones(C, dtype), "beta": np.zeros(C, dtype)}
        self.buffers = {"running_mean": np.zeros(C, dtype), "running_var": np.ones(C, dtype)}
        return out

    # A cnn.distributed communicator while training data-parallel: the statistics
    # are then the whole batch's over every rank's slice (NumPy, one Allreduce).
    comm = None
    _synced = False     # this forward pass used the whole batch's statistics

    def forward(self, x, training=False):
        self._synced = training and self.comm is not None
        if self._synced:
            out, self.cache = self.comm.batchnorm_forward(
                x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
                self.buffers["running_var"], self.momentum, self.eps, self.ops, self.threads)
            return out
        out, self.cache = self.ops.batchnorm2d_forward(
            x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
            self.buffers["running_var"], training=training, momentum=self.momentum,
            eps=self.eps, threads=self.threads)
        return out

    def backward(self, dout, need_dx=True):
        if self._synced:
            dx, self.grads["gamma"], self.grads["beta"] = self.comm.batchnorm_backward(
                dout, self.cache, self.ops, self.threads)
            return dx
        dx, self.grads["gamma"], self.grads["beta"] = self.ops.batchnorm2d_backward(
            dout, self.cache, threads=self.threads)
        return dx

    def config(self):
        return {"type": "BatchNorm2D", "momentum": self.momentum, "eps": self.eps}


LAYER_TYPES = {cls.__name__: cls for cls in
               (Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, ReLU, Flatten, Dense, Dropout,
                BatchNorm2D)}


def layer_from_config(config):
    """Rebuild a layer from ``Layer.config()`` output."""
    kind = config.get("type") if isinstance(config, dict) else config
    if not isinstance(config, dict) or not isinstance(kind, str) or kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}")
    args = {k: v for k, v in config.items() if k != "type"}
    try:
        return LAYER_TYPES[config["type"]](**args)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {config['type']}: {exc}") from None
