"""GlobalAvgPool2D: the per-channel mean over H and W, for any input size."""
import numpy as np
import pytest

from cnn.architectures import build_architecture
from cnn.backends import get_backend
from cnn.io import load_model, save_model
from cnn.layers import GlobalAvgPool2D, layer_from_config
from cnn.optim import make_optimizer


def built(shape, dtype=np.float32):
    layer = GlobalAvgPool2D()
    out_shape = layer.build(shape, np.random.default_rng(0), np.dtype(dtype))
    return layer, out_shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 1, 1), (2, 5, 7), (4, 8, 8)])
def test_forward_is_the_mean_over_height_and_width(shape, dtype):
    layer, out_shape = built(shape, dtype)
    assert out_shape == (shape[0],) == layer.output_shape
    x = np.random.default_rng(1).standard_normal((3,) + shape).astype(dtype)
    out = layer.forward(x, training=True)
    assert out.shape == (3, shape[0]) and out.dtype == dtype
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)), rtol=1e-6 if dtype == np.float32
                               else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 1, 1), (2, 5, 7)])
def test_backward_spreads_dout_over_the_cells(shape, dtype):
    layer, _ = built(shape, dtype)
    x = np.random.default_rng(2).standard_normal((2,) + shape).astype(dtype)
    layer.forward(x)
    dout = np.random.default_rng(3).standard_normal((2, shape[0])).astype(dtype)
    dx = layer.backward(dout)
    assert dx.shape == x.shape and dx.dtype == dtype and dx.flags.c_contiguous
    H, W = shape[1:]
    np.testing.assert_allclose(dx, np.broadcast_to(dout[:, :, None, None] / (H * W), x.shape),
                               rtol=1e-6)


def test_numerical_gradient():
    layer, _ = built((2, 5, 7), np.float64)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 5, 7))
    weights = rng.standard_normal((2, 2))       # loss = sum(weights * out)
    layer.forward(x)
    dx = layer.backward(weights)
    numeric, eps = np.zeros_like(x), 1e-6
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + eps
        up = (weights * layer.forward(x)).sum()
        x[i] = saved - eps
        down = (weights * layer.forward(x)).sum()
        x[i] = saved
        numeric[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(4,), (2, 3), (1, 2, 3, 4)])
def test_needs_channels_height_width(shape):
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D needs \(C, H, W\) input"):
        GlobalAvgPool2D().build(shape, np.random.default_rng(0), np.dtype(np.float32))


def test_config_round_trip_and_no_arguments():
    assert GlobalAvgPool2D().config() == {"type": "GlobalAvgPool2D"}
    assert type(layer_from_config({"type": "GlobalAvgPool2D"})) is GlobalAvgPool2D
    with pytest.raises(ValueError, match="GlobalAvgPool2D"):
        layer_from_config({"type": "GlobalAvgPool2D", "kernel": 2})


SPEC = "conv6k3p1-bn-relu-gap-dense4"


@pytest.mark.parametrize("token", ["gap", "globalavgpool", "GAP"])
def test_spec_tokens(token):
    model = build_architecture(f"conv6k3p1-relu-{token}-dense4", 4, input_shape=(3, 9, 11))
    assert type(model.layers[2]) is GlobalAvgPool2D
    assert model.build(seed=0).output_shape == (4,)


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32), (3, 7, 5)])
def test_a_spec_model_with_gap_fits_any_input_size(input_shape):
    model = build_architecture(SPEC, 4, input_shape=input_shape).build(seed=0)
    assert model.layers[3].output_shape == (6,)
    assert model.num_params() == 6 * input_shape[0] * 9 + 6 + 2 * 6 + 6 * 4 + 4


def test_save_load_round_trip(tmp_path):
    model = build_architecture(SPEC, 4, input_shape=(3, 12, 10)).build(seed=0)
    model.normalization = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    save_model(tmp_path / "gap.npz", model)
    loaded = load_model(tmp_path / "gap.npz")
    assert loaded.config() == model.config()
    pixels = np.random.default_rng(5).integers(0, 256, (6, 3, 12, 10), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.predict_proba(pixels), model.predict_proba(pixels))


@pytest.mark.parametrize("backend", ["cython", "python"])
def test_a_spec_model_trains_a_step(backend):
    model = build_architecture(SPEC, 4, input_shape=(3, 12, 10)).build(seed=0, backend=backend)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((16, 3, 12, 10)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    ops = get_backend(backend)
    optimizer = make_optimizer("adam", model, 0.01)
    losses = []
    for _ in range(5):
        loss, dlogits = ops.softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(dlogits, input_grad=False)
        assert np.abs(model.layers[0].grads["w"]).sum() > 0   # gradient reached the conv
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
