"""Dense -> ReLU as one step (cnn.layers.DenseReLU): at inference the ReLU is the
dense kernel's epilogue (``dense_forward(..., relu=True)``) on every backend,
with the same output as the two layers; training runs the layers."""
import numpy as np
import pytest

from cnn.architectures import build_architecture
from cnn.backends import get_backend
from cnn.layers import DenseReLU

BACKENDS = ["cython", "python", "naive"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_epilogue_is_relu_forward(backend, dtype):
    ops = get_backend(backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(dtype)
    w = rng.standard_normal((4, 7)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    x[2, 3] = np.nan                                  # a NaN row: relu_forward keeps NaN
    plain, _ = ops.dense_forward(x, w, b)
    want, _ = ops.relu_forward(plain)
    got, cache = ops.dense_forward(x, w, b, relu=True, threads=2)
    assert cache is None and got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[2]).all() and (got[[0, 1, 3, 4]] >= 0).all()
    with pytest.raises(ValueError, match="relu=True"):
        ops.dense_backward(np.ones_like(got), cache)


@pytest.mark.parametrize("backend", ["cython", "python"])
def test_models_fuse_dense_relu_at_inference_only(backend, monkeypatch):
    model = build_architecture("lenet5", 10, (1, 28, 28)).build(seed=0, backend=backend)
    steps = [s for s in model.steps() if type(s) is DenseReLU]
    assert len(steps) == 2                            # 400 -> 120 and 120 -> 84
    x = np.random.default_rng(1).standard_normal((8, 1, 28, 28)).astype(np.float32)
    calls = []
    ops = model.layers[0].ops
    real = ops.dense_forward
    monkeypatch.setattr(ops, "dense_forward",
                        lambda *a, **k: calls.append(k.get("relu", False)) or real(*a, **k))
    fused = model.forward(x, need_cache=False)
    assert calls == [True, True, False]
    calls.clear()
    layers = model.forward(x, need_cache=True)
    assert calls == [False, False, False]
    np.testing.assert_array_equal(fused, layers)


def test_no_backward_after_an_inference_pass():
    model = build_architecture("lenet5", 10, (1, 28, 28)).build(seed=0)
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    out = model.forward(x, training=True)
    model.forward(x, need_cache=False)
    with pytest.raises(ValueError, match="need_cache=False"):
        model.backward(np.ones_like(out))
