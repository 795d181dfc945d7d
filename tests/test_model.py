"""Sequential models: whole-model gradients, prediction on raw pixels, summary, seeds."""
import numpy as np
import pytest

from cnn.architectures import build_architecture
from cnn.backends import get_backend
from cnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from cnn.model import Sequential

BACKENDS = ["cython", "python"]
# The gradient checks make thousands of tiny kernel calls: one thread, since the
# compiled kernels open a parallel region even for a 4-row batch, and waking a
# second thread on a busy machine can cost a scheduler tick per call.
SERIAL = 1
NORM = {"mean": 0.2860, "std": 0.3530}


# --------------------------------------------------------------------------- gradients


def small_net(pool):
    layers = [Conv2D(3, 3, pad=1), BatchNorm2D(), ReLU(), pool(2),
              Conv2D(4, 3), ReLU(), Flatten(), Dense(5), ReLU()]
    if pool is AvgPool2D:
        layers.append(Dropout(0.0))   # rate 0: deterministic, but in the chain
    return layers + [Dense(3)]


def whole_model_gradient_check(model, ops, x, y, training, h=1e-6):
    """Compare model.backward's gradients of the backend's softmax cross-entropy
    w.r.t. every parameter and the input with central differences."""
    buffers = {k: v.copy() for k, v in model.state().items()
               if k.endswith(("running_mean", "running_var"))}

    def restore():
        # BatchNorm in training mode updates its running statistics on every
        # forward; the loss does not depend on them, but keep every evaluation
        # on the same state anyway.
        for key, value in buffers.items():
            model.state()[key][...] = value

    def loss_at():
        restore()
        return ops.softmax_cross_entropy(model.forward(x, training=training), y,
                                         threads=1)[0]

    restore()
    loss, dlogits = ops.softmax_cross_entropy(model.forward(x, training=training), y,
                                              threads=1)
    assert np.isfinite(loss)
    dx = model.backward(dlogits)
    params = model.parameters()
    assert params, "the net has parameters"
    checked = []
    for key, param, grads, name in params:
        analytic = grads[name].copy()
        assert analytic.shape == param.shape, key
        numeric = np.zeros_like(param)
        for i in range(param.size):
            old = param.flat[i]
            param.flat[i] = old + h
            plus = loss_at()
            param.flat[i] = old - h
            minus = loss_at()
            param.flat[i] = old
            numeric.flat[i] = (plus - minus) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8,
                                   err_msg=f"gradient of {key}")
        checked.append(key)
    numeric = np.zeros_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + h
        plus = loss_at()
        x.flat[i] = old - h
        minus = loss_at()
        x.flat[i] = old
        numeric.flat[i] = (plus - minus) / (2 * h)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, numeric, rtol=1e-5, atol=1e-8, err_msg="gradient of x")
    return checked


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool", [MaxPool2D, AvgPool2D], ids=["maxpool", "avgpool"])
def test_whole_model_gradients_training_mode(backend, pool):
    model = Sequential(small_net(pool), input_shape=(1, 8, 8)).build(
        seed=1, dtype=np.float64, backend=backend, threads=SERIAL)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 8, 8))
    y = np.array([0, 1, 2, 1])
    checked = whole_model_gradient_check(model, get_backend(backend), x, y, training=True)
    assert checked == ["0.w", "0.b", "1.gamma", "1.beta", "4.w", "4.b", "7.w", "7.b",
                       f"{len(model.layers) - 1}.w", f"{len(model.layers) - 1}.b"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_model_gradients_inference_mode(backend):
    """With training=False batch norm uses (non-trivial) running statistics."""
    model = Sequential(small_net(MaxPool2D), input_shape=(1, 8, 8)).build(
        seed=2, dtype=np.float64, backend=backend, threads=SERIAL)
    bn = model.layers[1]
    bn.buffers["running_mean"][...] = [0.3, -0.2, 0.1]
    bn.buffers["running_var"][...] = [0.5, 2.0, 1.5]
    bn.params["gamma"][...] = [1.5, 0.7, -0.4]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 8, 8))
    whole_model_gradient_check(model, get_backend(backend), x, np.array([2, 0, 1]),
                               training=False)
    np.testing.assert_array_equal(bn.buffers["running_mean"], [0.3, -0.2, 0.1])


def test_backends_agree_on_a_training_step():
    """cython and python compute the same loss and gradients for the same model."""
    results = []
    for backend in BACKENDS:
        model = Sequential(small_net(MaxPool2D), input_shape=(1, 8, 8)).build(
            seed=5, dtype=np.float64, backend=backend)
        x = np.random.default_rng(3).standard_normal((6, 1, 8, 8))
        ops = get_backend(backend)
        loss, d = ops.softmax_cross_entropy(model.forward(x, training=True),
                                            np.arange(6) % 3)
        dx = model.backward(d)
        results.append((loss, dx, {k: g[n].copy() for k, _, g, n in model.parameters()}))
    (l1, dx1, g1), (l2, dx2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-12)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-9, atol=1e-12)
    assert g1.keys() == g2.keys()
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-9, atol=1e-12, err_msg=k)


# --------------------------------------------------------------------------- prediction


@pytest.fixture(scope="module")
def lenet():
    model = build_architecture("lenet5").build(seed=3)
    model.normalization = dict(NORM)
    return model


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)


def test_predict_accepts_uint8_and_float_in_both_layouts(lenet, pixels):
    ref = lenet.predict_proba(pixels)
    assert ref.shape == (20, 10) and ref.dtype == np.float32
    np.testing.assert_allclose(ref.sum(axis=1), 1, rtol=1e-5)
    assert np.all(ref >= 0)
    variants = {
        "uint8 (N,1,H,W)": pixels[:, None],
        "float64 x/255 (N,H,W)": pixels / 255.0,
        "float64 x/255 (N,1,H,W)": pixels[:, None] / 255.0,
        "float32 x/255": pixels.astype(np.float32) / np.float32(255),
        "non-contiguous": np.asfortranarray(pixels),
    }
    for name, x in variants.items():
        np.testing.assert_array_equal(lenet.predict_proba(x), ref, err_msg=name)
        np.testing.assert_array_equal(lenet.predict(x), ref.argmax(axis=1), err_msg=name)
    # every uint8 value maps to exactly the float it stands for
    v = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    m = Sequential([Flatten(), Dense(2)], input_shape=(1, 16, 16)).build()
    np.testing.assert_array_equal(m.prepare(v), m.prepare(v / 255.0))


def test_prediction_depends_on_input_and_normalization(lenet, pixels):
    ref = lenet.predict_proba(pixels)
    assert not np.allclose(lenet.predict_proba(255 - pixels), ref)
    lenet.normalization = None
    try:
        assert not np.allclose(lenet.predict_proba(pixels), ref)
    finally:
        lenet.normalization = dict(NORM)
    x = lenet.prepare(pixels)
    expected = (pixels[:, None].astype(np.float32) / 255 - np.float32(NORM["mean"])) \
        / np.float32(NORM["std"])
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_batched_prediction_matches_unbatched(lenet, pixels):
    ref = lenet.predict_proba(pixels, batch_size=256)
    for bs in (7, 1, 20, 19):
        # BLAS blocks differently for other batch sizes: equal to float32 rounding
        np.testing.assert_allclose(lenet.predict_proba(pixels, batch_size=bs), ref,
                                   rtol=1e-5, atol=1e-6, err_msg=f"batch_size={bs}")
        np.testing.assert_array_equal(lenet.predict(pixels, batch_size=bs), ref.argmax(1))
    one_by_one = np.concatenate([lenet.predict_proba(pixels[i:i + 1]) for i in range(20)])
    np.testing.assert_allclose(one_by_one, ref, rtol=1e-5, atol=1e-6)


def test_single_and_empty_batches(lenet, pixels):
    p1 = lenet.predict_proba(pixels[:1])
    assert p1.shape == (1, 10)
    assert lenet.predict(pixels[:1]).shape == (1,)
    for empty in (np.zeros((0, 28, 28), np.uint8), np.zeros((0, 1, 28, 28), np.float32)):
        assert lenet.predict_proba(empty).shape == (0, 10)
        p = lenet.predict(empty)
        assert p.shape == (0,) and p.dtype.kind == "i"


@pytest.mark.parametrize("x, exc, words", [
    (np.zeros((2, 1, 28, 27), np.uint8), ValueError, ["(N, 1, 28, 28)", "(2, 1, 28, 27)"]),
    (np.zeros((2, 3, 28, 28), np.uint8), ValueError, ["(N, 1, 28, 28)", "(2, 3, 28, 28)"]),
    (np.zeros((28, 28), np.uint8), ValueError, ["(28, 28)"]),
    (np.zeros((2, 784), np.uint8), ValueError, ["(2, 784)"]),
    (np.zeros((1, 1, 1, 28, 28), np.uint8), ValueError, ["(1, 1, 1, 28, 28)"]),
    (np.full((2, 28, 28), np.nan), ValueError, ["NaN"]),
    (np.full((2, 28, 28), np.inf, np.float32), ValueError, ["infinite"]),
    (np.full((2, 28, 28), 2.0), ValueError, ["[0, 1]", "uint8"]),
    (np.full((2, 28, 28), 255.0), ValueError, ["[0, 1]"]),
    (np.full((2, 28, 28), -0.5), ValueError, ["[0, 1]"]),
    (np.zeros((2, 28, 28), np.int32), TypeError, ["uint8", "int32"]),
    (np.zeros((2, 28, 28), np.int64), TypeError, ["uint8", "int64"]),
    (np.zeros((2, 28, 28), bool), TypeError, ["uint8"]),
    ([[0] * 28] * 28, TypeError, ["numpy array"]),
], ids=["width", "channels", "2d", "flat", "5d", "nan", "inf", "above1", "255float",
        "negative", "int32", "int64", "bool", "list"])
def test_bad_input_raises_clear_error(lenet, x, exc, words):
    for fn in (lenet.predict, lenet.predict_proba):
        with pytest.raises(exc) as info:
            fn(x)
        for word in words:
            assert word in str(info.value), (word, str(info.value))


def test_bad_batch_size(lenet, pixels):
    for bs in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            lenet.predict(pixels, batch_size=bs)


def test_float64_model_predicts():
    """A model built (or saved) in float64 takes raw pixels like a float32 one."""
    x = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    m32 = build_architecture("lenet5").build(seed=4)
    m64 = build_architecture("lenet5").build(seed=4, dtype=np.float64)
    for m in (m32, m64):
        m.normalization = dict(NORM)
    p64 = m64.predict_proba(x)
    assert p64.dtype == np.float64
    np.testing.assert_allclose(p64, m32.predict_proba(x), rtol=1e-4, atol=1e-5)
    assert m64.predict_proba(np.zeros((0, 28, 28), np.uint8)).shape == (0, 10)


# --------------------------------------------------------------------------- summary, seeds


@pytest.mark.parametrize("arch, total", [("lenet5", 61_706), ("convnet", 421_642)])
def test_summary_lists_layers_and_parameter_total(arch, total):
    model = build_architecture(arch).build(seed=0)
    sizes = sum(p.size for layer in model.layers for p in layer.params.values())
    assert model.num_params() == sizes == total
    text = model.summary()
    lines = text.splitlines()
    for i, layer in enumerate(model.layers):
        row = [line for line in lines if line.startswith(f"{i}: {layer!r}")]
        assert len(row) == 1, (i, layer, text)
        assert str(layer.output_shape) in row[0]
        count = sum(p.size for p in layer.params.values())
        assert row[0].rstrip().endswith(f"{count:,}")
    assert lines[-1] == f"total parameters: {total:,}"
    assert "input" in text and str(model.input_shape) in text


def test_same_seed_same_weights_different_seed_different():
    def weights(seed):
        return build_architecture("convnet_bn").build(seed=seed).state()
    a, b, c = weights(7), weights(7), weights(8)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    differ = [k for k in a if k.endswith(".w") and not np.array_equal(a[k], c[k])]
    assert differ == [k for k in a if k.endswith(".w")]
    # biases start at zero, batch norm at the identity
    assert all(not a[k].any() for k in a if k.endswith((".b", "beta", "running_mean")))
    assert all((a[k] == 1).all() for k in a if k.endswith(("gamma", "running_var")))


def test_initialisation_scale():
    model = Sequential([Flatten(), Dense(400), Dense(10, init="glorot")],
                       input_shape=(1, 20, 20)).build(seed=0)
    he, glorot = model.layers[1].params["w"], model.layers[2].params["w"]
    assert he.std() == pytest.approx(np.sqrt(2 / 400), rel=0.05)          # He normal
    limit = np.sqrt(6 / (400 + 10))
    assert np.abs(glorot).max() <= limit and np.abs(glorot).max() > 0.9 * limit


def test_build_checks_the_output():
    with pytest.raises(ValueError, match="flat class scores"):
        Sequential([Conv2D(2, 3)], input_shape=(1, 8, 8)).build()
    with pytest.raises(ValueError, match="outputs 5 scores but there are 10 classes"):
        Sequential([Flatten(), Dense(5)], input_shape=(1, 8, 8),
                   class_names=[str(i) for i in range(10)]).build()
    with pytest.raises(ValueError, match=r"layer 1 \(Dense.*Flatten"):
        Sequential([Conv2D(2, 3), Dense(5)], input_shape=(1, 8, 8)).build()


def test_config_round_trip():
    model = build_architecture("convnet_bn").build(seed=0)
    again = Sequential.from_config(model.config()).build(seed=0)
    assert again.config() == model.config()
    for k, v in model.state().items():
        np.testing.assert_array_equal(again.state()[k], v)


@pytest.mark.parametrize("backend", ["cython", "python"])
def test_backward_without_input_grad_keeps_parameter_grads(backend):
    model = build_architecture("lenet5").build(seed=3, backend=backend)
    x = np.random.default_rng(4).standard_normal((5, 1, 28, 28)).astype(np.float32)
    dlogits = np.random.default_rng(5).standard_normal((5, 10)).astype(np.float32)
    model.forward(x, training=True)
    dx = model.backward(dlogits)
    full = {k: g[n].copy() for k, _, g, n in model.parameters()}
    model.forward(x, training=True)
    assert model.backward(dlogits, input_grad=False) is None
    assert dx.shape == x.shape
    for key, _, grads, name in model.parameters():
        np.testing.assert_array_equal(grads[name], full[key], err_msg=key)


def test_parameters_are_what_the_docstring_says():
    """(key, param, grads, name): param is the array state() saves under key, and
    grads[name] its gradient after backward; build and set_backend return the model."""
    model = Sequential(small_net(MaxPool2D), input_shape=(1, 6, 6))
    assert model.build(seed=0, backend="python", threads=SERIAL) is model
    assert model.set_backend("python", SERIAL) is model
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x, training=True)))
    state, params = model.state(), model.parameters()
    assert [len(p) for p in params] == [4] * len(params)
    for key, param, grads, name in params:
        assert state[key] is param and key.endswith("." + name)
        assert grads[name].shape == param.shape and grads[name].dtype == param.dtype
    buffers = {"running_mean", "running_var"}
    assert {key for key, *_ in params} == {k for k in state if k.split(".")[1] not in buffers}


def test_an_unbuilt_model_says_so():
    with pytest.raises(RuntimeError, match="not built: call build"):
        assert Sequential([Flatten(), Dense(2)]).num_classes
