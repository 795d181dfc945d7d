"""Conv2D -> BatchNorm2D [-> ReLU [-> MaxPool2D]] steps (cnn.folding): the batch norm
folded into the convolution at inference gives the layers' own output, training
runs the layers unchanged, and weights or statistics changed in place are seen."""
import numpy as np
import pytest

from cnn.architectures import build_architecture
from cnn.folding import ConvBatchNorm
from cnn.layers import BatchNorm2D

SPECS = {
    "conv-bn": "conv8k3p1-bn-flatten-dense10",
    "conv-bn-relu": "conv8k3p1-bn-relu-flatten-dense10",
    "conv-bn-relu-pool": "conv8k3p1-bn-relu-maxpool2-flatten-dense10",
    "stride 2, pool 3/2": "conv8k3s2p1-bn-relu-maxpool3s2-flatten-dense10",
    "winograd-sized": "conv16k3p1-relu-conv32k3p1-bn-relu-maxpool2-flatten-dense10",
}
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def trained_statistics(model, shape, seed=0):
    """Batch norms with running statistics, gamma and beta far from their defaults."""
    rng = np.random.default_rng(seed)
    for _ in range(3):
        model.forward(rng.standard_normal((16,) + shape).astype(model.dtype), training=True)
    for layer in model.layers:
        if type(layer) is BatchNorm2D:
            layer.params["gamma"][:] = rng.uniform(0.5, 2.0, layer.params["gamma"].shape)
            layer.params["beta"][:] = rng.normal(0.0, 0.5, layer.params["beta"].shape)
    return model


def model_for(spec, backend, dtype, shape=(3, 12, 12)):
    model = build_architecture(spec, 10, shape).build(seed=0, backend=backend, threads=2,
                                                      dtype=dtype)
    return trained_statistics(model, shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["cython", "python"])
@pytest.mark.parametrize("name", list(SPECS))
def test_folded_inference_equals_the_layers(name, backend, dtype):
    model = model_for(SPECS[name], backend, dtype)
    assert any(type(step) is ConvBatchNorm for step in model.steps())
    x = np.random.default_rng(3).standard_normal((16, 3, 12, 12)).astype(dtype)
    folded = model.forward(x, need_cache=False)
    layers = model.forward(x, need_cache=True)       # the layers one by one
    assert folded.dtype == dtype
    assert np.abs(folded - layers).max() <= TOLERANCE[dtype] * np.abs(layers).max()


def test_steps_group_what_follows_the_batch_norm():
    model = build_architecture("convnet_deep", 10, (1, 28, 28)).build()
    kinds = [[type(layer).__name__ for layer in step.layers]
             for step in model.steps() if type(step) is ConvBatchNorm]
    assert kinds == [["Conv2D", "BatchNorm2D", "ReLU"],
                     ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D"]] * 2


def test_training_runs_the_layers_unchanged():
    """Forward and backward in training equal those of the model without fused steps."""
    x = np.random.default_rng(4).standard_normal((8, 3, 12, 12)).astype(np.float64)
    fused, plain = (model_for(SPECS["conv-bn-relu-pool"], "cython", np.float64)
                    for _ in range(2))
    plain.fuse = False
    for model in (fused, plain):
        out = model.forward(x, training=True)
        model.backward(np.ones_like(out))
    np.testing.assert_array_equal(fused.forward(x, training=True), plain.forward(x, training=True))
    for (_, _, g1, n1), (_, _, g2, n2) in zip(fused.parameters(), plain.parameters()):
        np.testing.assert_array_equal(g1[n1], g2[n2])


def test_changes_made_in_place_are_seen():
    model = model_for(SPECS["conv-bn-relu-pool"], "cython", np.float64)
    x = np.random.default_rng(5).standard_normal((4, 3, 12, 12))
    model.forward(x, need_cache=False)
    bn = model.layers[1]
    for array in (model.layers[0].params["w"], bn.params["gamma"], bn.buffers["running_var"]):
        array *= 1.5                                   # an optimizer step, a training pass
        folded = model.forward(x, need_cache=False)
        assert np.allclose(folded, model.forward(x, need_cache=True), rtol=1e-12, atol=1e-12)


def test_no_backward_after_an_inference_pass():
    model = model_for(SPECS["conv-bn-relu"], "cython", np.float32)
    x = np.random.default_rng(6).standard_normal((2, 3, 12, 12)).astype(np.float32)
    out = model.forward(x, training=True)
    model.forward(x, need_cache=False)                 # the layers' caches are stale now
    with pytest.raises(ValueError, match="need_cache=False"):
        model.backward(np.ones_like(out))
