"""The model's Winograd path (cnn.winograd): which fused steps take it, that their
inference output is the im2col path's within the kernel's tolerance, and that
the transformed filters follow weights updated in place."""
import numpy as np
import pytest

from cnn import winograd
from cnn.architectures import build_architecture
from cnn.layers import ConvReLUMaxPool

pytest.importorskip("cnn._winograd")


def convnet(dtype=np.float32, seed=0):
    model = build_architecture("convnet", 10, (1, 28, 28))
    return model.build(seed=seed, backend="cython", threads=2, dtype=dtype)


def images(n, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(dtype)


def spy(monkeypatch, model):
    """Count the calls of the backend's Winograd kernel."""
    calls = []
    ops = model.layers[0].ops
    real = ops.winograd_conv2d_forward
    monkeypatch.setattr(ops, "winograd_conv2d_forward",
                        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


@pytest.mark.parametrize("dtype,tolerance", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_inference_matches_the_im2col_path(monkeypatch, dtype, tolerance):
    model = convnet(dtype)
    x = images(64, dtype=dtype)
    calls = spy(monkeypatch, model)
    fast = model.forward(x, need_cache=False)
    # convnet's second block (32 channels in) takes it; the first (1 channel) does not
    assert calls == [(64, 32, 14, 14)]
    monkeypatch.setenv("CNN_WINOGRAD", "0")
    slow = model.forward(x, need_cache=False)
    assert len(calls) == 1
    assert np.abs(fast - slow).max() <= tolerance * np.abs(slow).max()
    assert (fast.argmax(1) == slow.argmax(1)).mean() >= 0.98


def test_training_and_small_batches_keep_im2col(monkeypatch):
    model = convnet()
    calls = spy(monkeypatch, model)
    model.forward(images(64), training=True)                  # backward needs the argmax
    model.forward(images(winograd.MIN_IMAGES - 1), need_cache=False)
    assert calls == []
    model.forward(images(winograd.MIN_IMAGES), need_cache=False)
    assert len(calls) == 1


def test_filters_follow_weights_updated_in_place(monkeypatch):
    """An optimizer updates w in place: the next inference must use the new w."""
    model = convnet()
    x = images(16)
    model.forward(x, need_cache=False)
    w = model.layers[3].params["w"]
    w *= 0.5                                                  # in place, as SGD does
    w[0, 0, 0, 0] += 1.0
    fast = model.forward(x, need_cache=False)
    monkeypatch.setenv("CNN_WINOGRAD", "0")
    slow = model.forward(x, need_cache=False)
    assert np.abs(fast - slow).max() <= 1e-5 * np.abs(slow).max()


def test_which_steps_fit():
    model = build_architecture("conv32k3p1-relu-maxpool2-conv32k3p1-relu-maxpool2"
                               "-conv32k3s2p1-relu-maxpool2-flatten-dense10", 10, (1, 32, 32))
    model.build(backend="cython")
    steps = [s for s in model.steps() if type(s) is ConvReLUMaxPool]
    assert len(steps) == 3
    ops = model.layers[0].ops
    fits = [winograd.fits(s.layers[0], s.layers[2], (64, 32, 16, 16), ops) for s in steps]
    assert fits == [True, True, False]                                  # the third: stride 2
    conv, _, pool = steps[1].layers
    assert not winograd.fits(conv, pool, (64, 8, 16, 16), ops)          # too few channels
    assert not winograd.fits(conv, pool, (64, 32, 16, 16), get_python_backend())


def get_python_backend():
    from cnn.backends import get_backend
    return get_backend("python")
