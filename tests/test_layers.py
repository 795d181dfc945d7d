"""Layers: shapes, dropout, flatten, batch-norm statistics, configs."""
import json

import numpy as np
import pytest

from cnn.backends import get_backend
from cnn.layers import (
    LAYER_TYPES,
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
    layer_from_config,
)

BACKENDS = ["cython", "python"]


def built(layer, input_shape, backend="cython", seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    out_shape = layer.build(input_shape, rng, np.dtype(dtype))
    layer.ops = get_backend(backend)
    layer.threads = 1
    if isinstance(layer, Dropout):
        layer.rng = np.random.default_rng(seed + 1)
    return layer, out_shape


SHAPE_CASES = [
    (lambda: Conv2D(4, 3), (2, 9, 9), (4, 7, 7)),
    (lambda: Conv2D(4, 3, pad=1), (2, 9, 9), (4, 9, 9)),
    (lambda: Conv2D(5, (3, 2), stride=(2, 1), pad=(1, 0)), (3, 8, 7), (5, 4, 6)),
    (lambda: Conv2D(2, 5, stride=2, pad=2), (1, 28, 28), (2, 14, 14)),
    (lambda: MaxPool2D(2), (3, 9, 9), (3, 4, 4)),
    (lambda: MaxPool2D(3, stride=2), (3, 9, 9), (3, 4, 4)),
    (lambda: AvgPool2D((2, 3)), (2, 6, 9), (2, 3, 3)),
    (lambda: AvgPool2D(2, stride=1), (2, 5, 5), (2, 4, 4)),
    (lambda: ReLU(), (3, 4, 4), (3, 4, 4)),
    (lambda: ReLU(), (12,), (12,)),
    (lambda: Flatten(), (3, 4, 5), (60,)),
    (lambda: Dense(7), (12,), (7,)),
    (lambda: Dropout(0.5), (3, 4, 4), (3, 4, 4)),
    (lambda: BatchNorm2D(), (3, 4, 4), (3, 4, 4)),
    (lambda: GlobalAvgPool2D(), (3, 5, 7), (3,)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make, in_shape, out_shape", SHAPE_CASES,
                         ids=[f"{i}-{type(c[0]()).__name__}" for i, c in enumerate(SHAPE_CASES)])
def test_forward_and_backward_shapes_match_build(backend, make, in_shape, out_shape):
    layer, built_shape = built(make(), in_shape, backend)
    assert built_shape == out_shape
    assert layer.output_shape == out_shape and layer.input_shape == in_shape
    x = np.random.default_rng(1).standard_normal((3,) + in_shape).astype(np.float32)
    for training in (True, False):
        out = layer.forward(x, training=training)
        assert out.shape == (3,) + out_shape and out.dtype == np.float32
        dx = layer.backward(np.ones_like(out))
        assert dx.shape == x.shape and dx.dtype == np.float32
    assert set(layer.grads) == set(layer.params)
    for name, p in layer.params.items():
        assert layer.grads[name].shape == p.shape, name
    assert layer.trainable == bool(layer.params)


def test_parameter_shapes():
    conv, _ = built(Conv2D(6, (5, 3)), (2, 10, 10))
    assert conv.params["w"].shape == (6, 2, 5, 3) and conv.params["b"].shape == (6,)
    dense, _ = built(Dense(4), (9,))
    assert dense.params["w"].shape == (4, 9) and dense.params["b"].shape == (4,)
    bn, _ = built(BatchNorm2D(), (5, 3, 3))
    assert {k: v.shape for k, v in bn.params.items()} == {"gamma": (5,), "beta": (5,)}
    assert {k: v.shape for k, v in bn.buffers.items()} == {"running_mean": (5,),
                                                           "running_var": (5,)}
    for layer in (MaxPool2D(), AvgPool2D(), ReLU(), Flatten(), Dropout()):
        built(layer, (2, 4, 4))
        assert layer.params == {} and layer.buffers == {}


def test_dense_and_conv_compute_what_they_say():
    dense, _ = built(Dense(3), (4,), dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 4))
    dense.params["b"][...] = [1, 2, 3]
    np.testing.assert_allclose(dense.forward(x), x @ dense.params["w"].T + [1, 2, 3])
    conv, _ = built(Conv2D(2, 3), (1, 3, 3), dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((2, 1, 3, 3))
    expected = np.einsum("nchw,fchw->nf", x, conv.params["w"])[:, :, None, None]
    np.testing.assert_allclose(conv.forward(x), expected, rtol=1e-12)


@pytest.mark.parametrize("make, shape, words", [
    (lambda: Conv2D(2, 3), (8,), ["Conv2D", "(C, H, W)"]),
    (lambda: Conv2D(2, 5), (1, 4, 4), ["does not fit"]),
    (lambda: MaxPool2D(3), (1, 2, 5), ["MaxPool2D", "larger"]),
    (lambda: AvgPool2D(2), (16,), ["AvgPool2D", "(C, H, W)"]),
    (lambda: Dense(3), (2, 4, 4), ["Dense", "Flatten"]),
    (lambda: BatchNorm2D(), (10,), ["BatchNorm2D"]),
])
def test_build_rejects_incompatible_input(make, shape, words):
    with pytest.raises(ValueError) as info:
        make().build(shape, np.random.default_rng(0), np.dtype(np.float32))
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------- dropout


def test_dropout_is_identity_at_inference():
    layer, _ = built(Dropout(0.7), (50,))
    x = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    out = layer.forward(x, training=False)
    np.testing.assert_array_equal(out, x)
    dout = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dout), dout)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_dropout_in_training(rate):
    layer, _ = built(Dropout(rate), (1000,))
    x = np.random.default_rng(0).uniform(1, 2, (200, 1000)).astype(np.float32)
    out = layer.forward(x, training=True)
    zero = out == 0
    # 200,000 Bernoulli draws: the standard error of the fraction is < 0.0012
    assert abs(zero.mean() - rate) < 0.006, zero.mean()
    kept = ~zero
    np.testing.assert_allclose(out[kept], x[kept] / (1 - rate), rtol=1e-6)
    # the expected value is preserved
    assert out.mean() == pytest.approx(x.mean(), rel=0.02)
    # backward applies the same mask and the same scale
    dout = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx[zero], 0)
    np.testing.assert_allclose(dx[kept], dout[kept] / (1 - rate), rtol=1e-6)
    # a new forward draws a new mask
    again = layer.forward(x, training=True)
    assert not np.array_equal(again == 0, zero)


def test_dropout_rate_zero_is_identity_in_training():
    layer, _ = built(Dropout(0.0), (30,))
    x = np.random.default_rng(0).standard_normal((10, 30)).astype(np.float32)
    np.testing.assert_array_equal(layer.forward(x, training=True), x)
    np.testing.assert_array_equal(layer.backward(x), x)


def test_dropout_is_reproducible_from_the_seed():
    a, _ = built(Dropout(0.5), (100,), seed=3)
    b, _ = built(Dropout(0.5), (100,), seed=3)
    x = np.ones((10, 100), np.float32)
    np.testing.assert_array_equal(a.forward(x, True), b.forward(x, True))


# --------------------------------------------------------------------------- flatten


@pytest.mark.parametrize("backend", BACKENDS)
def test_flatten_is_c_order_and_backward_inverts_it(backend):
    layer, shape = built(Flatten(), (3, 4, 5), backend)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    out = layer.forward(x)
    assert out.shape == (2, 60) == (2,) + shape
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3), (1, 0, 3, 1)]:
        assert out[n, c * 20 + h * 5 + w] == x[n, c, h, w]
    dout = np.arange(120, dtype=np.float32).reshape(2, 60)
    dx = layer.backward(dout)
    assert dx.shape == x.shape
    assert dx[1, 2, 3, 4] == dout[1, 59] and dx[0, 1, 0, 2] == dout[0, 22]


# --------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm_running_stats_update_only_in_training(backend):
    layer, _ = built(BatchNorm2D(momentum=0.2), (3, 4, 5), backend, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 4, 5)) * [[[[1.0]], [[2.0]], [[0.5]]]] + \
        [[[[3.0]], [[-1.0]], [[0.0]]]]
    mean, var = layer.buffers["running_mean"], layer.buffers["running_var"]
    ids = (id(mean), id(var))
    layer.forward(x, training=False)
    np.testing.assert_array_equal(mean, 0)
    np.testing.assert_array_equal(var, 1)

    out = layer.forward(x, training=True)
    m = x.mean(axis=(0, 2, 3))
    v = x.var(axis=(0, 2, 3))
    count = 6 * 4 * 5
    np.testing.assert_allclose(mean, 0.2 * m, rtol=1e-12)
    np.testing.assert_allclose(var, 0.8 + 0.2 * v * count / (count - 1), rtol=1e-12)
    assert (id(layer.buffers["running_mean"]), id(layer.buffers["running_var"])) == ids
    # training output uses the batch statistics
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), v / (v + 1e-5), rtol=1e-9)

    # inference uses the running statistics and leaves them alone
    frozen = mean.copy(), var.copy()
    layer.params["gamma"][...] = [1.0, 2.0, 3.0]
    layer.params["beta"][...] = [0.5, 0.0, -0.5]
    out = layer.forward(x, training=False)
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) \
        * layer.params["gamma"][:, None, None] + layer.params["beta"][:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-10)
    np.testing.assert_array_equal(mean, frozen[0])
    np.testing.assert_array_equal(var, frozen[1])


# --------------------------------------------------------------------------- configs


CONFIG_CASES = [
    Conv2D(8, (3, 5), stride=(2, 1), pad=(1, 2), init="glorot"),
    Conv2D(4, 3),
    MaxPool2D(3, stride=2),
    MaxPool2D((2, 3)),
    AvgPool2D(2, stride=1),
    ReLU(),
    Flatten(),
    Dense(17, init="glorot"),
    Dropout(0.25),
    BatchNorm2D(momentum=0.05, eps=1e-3),
    GlobalAvgPool2D(),
]


def test_config_round_trips_every_layer_type():
    assert {type(layer).__name__ for layer in CONFIG_CASES} == set(LAYER_TYPES)
    for layer in CONFIG_CASES:
        config = layer.config()
        assert config["type"] == type(layer).__name__
        through_json = json.loads(json.dumps(config))
        again = layer_from_config(through_json)
        assert type(again) is type(layer)
        assert again.config() == config
        assert repr(again) == repr(layer)


def test_rebuilt_layers_compute_the_same():
    x = np.random.default_rng(0).standard_normal((2, 2, 9, 9)).astype(np.float32)
    for layer in CONFIG_CASES:
        shape = (18,) if isinstance(layer, Dense) else (2, 9, 9)
        xin = x.reshape(2, 2, 81)[:, :, :9].reshape(2, 18) if isinstance(layer, Dense) else x
        a, _ = built(layer, shape, seed=1)
        b, _ = built(layer_from_config(layer.config()), shape, seed=1)
        for k in a.params:
            np.testing.assert_array_equal(a.params[k], b.params[k])
        np.testing.assert_array_equal(a.forward(xin, False), b.forward(xin, False))


@pytest.mark.parametrize("config, words", [
    ({"type": "Conv3D", "filters": 2}, ["unknown layer type 'Conv3D'", "Conv2D"]),
    ({"filters": 2}, ["unknown layer type None"]),
    ({"type": ["Dense"]}, ["unknown layer type"]),
    ("Dense", ["unknown layer type 'Dense'"]),
    ({"type": "Conv2D", "filters": 8}, ["Conv2D", "kernel"]),
    ({"type": "Conv2D", "filters": 0, "kernel": 3}, ["filters", "positive integer", "0"]),
    ({"type": "Conv2D", "filters": 2.5, "kernel": 3}, ["filters", "2.5"]),
    ({"type": "Conv2D", "filters": True, "kernel": 3}, ["filters", "True"]),
    ({"type": "Conv2D", "filters": 8, "kernel": 0}, ["kernel", ">= 1"]),
    ({"type": "Conv2D", "filters": 8, "kernel": "3"}, ["kernel", "'3'"]),
    ({"type": "Conv2D", "filters": 8, "kernel": [3, 3, 3]}, ["kernel", "pair"]),
    ({"type": "Conv2D", "filters": 8, "kernel": 3, "stride": 0}, ["stride", ">= 1"]),
    ({"type": "Conv2D", "filters": 8, "kernel": 3, "pad": -1}, ["pad", ">= 0"]),
    ({"type": "Conv2D", "filters": 8, "kernel": 3, "init": "xavier"}, ["init", "'xavier'"]),
    ({"type": "Conv2D", "filters": 8, "kernel": 3, "dilation": 2}, ["Conv2D", "dilation"]),
    ({"type": "Dense"}, ["Dense", "units"]),
    ({"type": "Dense", "units": -3}, ["units", "-3"]),
    ({"type": "Dense", "units": 3, "init": "zeros"}, ["init", "'zeros'"]),
    ({"type": "MaxPool2D", "kernel": 0}, ["kernel", ">= 1"]),
    ({"type": "AvgPool2D", "kernel": 2, "stride": 0}, ["stride", ">= 1"]),
    ({"type": "Dropout", "rate": 1.0}, ["rate", "[0, 1)", "1.0"]),
    ({"type": "Dropout", "rate": -0.1}, ["rate", "-0.1"]),
    ({"type": "Dropout", "rate": "0.5"}, ["rate", "'0.5'"]),
    ({"type": "BatchNorm2D", "momentum": 1.5}, ["momentum", "1.5"]),
    ({"type": "BatchNorm2D", "eps": 0}, ["eps", "positive"]),
    ({"type": "BatchNorm2D", "eps": "small"}, ["eps", "'small'"]),
    ({"type": "ReLU", "alpha": 0.1}, ["ReLU", "alpha"]),
])
def test_bad_configs_raise_value_error_naming_the_problem(config, words):
    with pytest.raises(ValueError) as info:
        layer_from_config(config)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
