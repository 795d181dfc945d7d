"""The inference plan (cnn.plan, ``model.compile()``) against ``model.forward``, and
its prepared steps (ConvReLUPoolPlan, DensePlan) against the NumPy reference."""
import threading

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import cnn.reference.conv_relu_pool as ref_crp
import cnn.reference.dense as ref_dense
from cnn.architectures import ARCHITECTURES, build_architecture
from cnn.backends import get_backend
from tests.helpers import assert_close, poison_kernel_outputs

ops = get_backend("cython")

# Every layer type, strided, padded, pooled both ways, batch norm after a
# convolution and not, a lone convolution: the steps without a prepared kernel.
SPECS = [
    "conv8k5s2p2-bn-relu-avgpool3s2-conv16k3p1-relu-maxpool2-flatten-dropout0.5-dense32-relu"
    "-dense10",
    "conv8k3p1-relu-avgpool2-bn-conv8k3s2-relu-maxpool3s2-dropout0.2-gap-dense10",
    "conv16k3p1-bn-relu-maxpool2-conv16k3p1-relu-conv8k3-flatten-dense10",
]


def built(arch, dtype=np.float32, threads=2, backend="cython"):
    shape = (3, 32, 32) if arch == "convnet_cifar" else (1, 28, 28)
    model = build_architecture(arch, input_shape=shape).build(seed=0, dtype=dtype,
                                                              backend=backend, threads=threads)
    rng = np.random.default_rng(1)
    for layer in model.layers:      # batch norms with statistics of their own
        if "running_mean" in layer.buffers:
            layer.buffers["running_mean"][...] = rng.standard_normal(
                layer.buffers["running_mean"].shape) * 0.1
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0,
                                                            layer.buffers["running_var"].shape)
            layer.params["gamma"][...] = rng.uniform(0.5, 1.5, layer.params["gamma"].shape)
    model.normalization = {"mean": 0.3, "std": 0.35}
    return model


def batch(model, n, seed=0):
    return np.random.default_rng(seed).standard_normal(
        (n,) + model.input_shape).astype(model.dtype)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES) + SPECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plan_equals_forward(arch, dtype):
    # The same kernels on the same numbers in the same order: equal, not close.
    # 1 image (filter blocks split across threads), 3, and 9 (Winograd where it fits)
    model = built(arch, dtype)
    plan = model.compile()
    for n in (1, 3, 9):
        x = batch(model, n, seed=n)
        expected = model.forward(x, training=False, need_cache=False)
        got = plan(x)
        assert got.dtype == np.dtype(dtype) and got.shape == (n, model.num_classes)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("arch", ["lenet5", "convnet_bn"])
def test_plan_thread_counts(arch, threads):
    model = built(arch, threads=threads)
    plan = model.compile()
    assert plan.threads == threads
    for n in (1, 2, 5, 8):
        x = batch(model, n, seed=n)
        np.testing.assert_array_equal(plan(x), model.forward(x, training=False,
                                                             need_cache=False))
        # and every thread count computes the same function
        one = model.compile(threads=1)(x)
        assert_close(plan(x), one, np.float32, name=f"{threads} threads vs 1, n={n}")


def test_plan_predict_proba_and_logits_match_the_model():
    model = built("convnet")
    plan = model.compile()
    raw = np.random.default_rng(3).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(plan.predict_proba(raw), model.predict_proba(raw))
    np.testing.assert_array_equal(plan.predict(raw[:5]), model.predict(raw[:5]))
    x = model.prepare(raw)
    np.testing.assert_array_equal(plan.logits(x, batch_size=7), model.logits(x, batch_size=7))
    with pytest.raises(ValueError, match="batch_size"):
        plan.logits(x, batch_size=0)


def test_plan_on_the_python_backend_runs_every_step_as_its_layer():
    model = built("convnet_bn", backend="python")
    plan = model.compile()
    assert all(kind in ("layer forward", "reshape", "identity") for _, kind in plan.prepared)
    x = batch(model, 2)
    np.testing.assert_array_equal(plan(x), model.forward(x, training=False, need_cache=False))


def test_plan_says_what_each_step_became():
    plan = built("convnet_bn").compile()
    kinds = [kind for _, kind in plan.prepared]
    assert kinds[0].startswith("folded batch norm, im2col")
    assert "dense+relu" in kinds and kinds[-1] == "dense"
    assert "InferencePlan('convnet_bn'" in repr(plan)
    plan = built("lenet5").compile()
    assert [kind for _, kind in plan.prepared] == ["im2col", "im2col", "reshape", "dense+relu",
                                                   "dense+relu", "dense"]


def test_plan_is_a_snapshot_and_leaves_the_model_alone():
    model = built("convnet_bn")
    plan = model.compile()
    x = batch(model, 9)
    before = plan(x)
    for layer in model.layers:
        assert layer.cache is None          # the plan never ran the model's layers
    for _, param, _, _ in model.parameters():
        param *= 1.5                        # training after compile ...
    model.layers[1].buffers["running_mean"] += 1.0
    np.testing.assert_array_equal(plan(x), before)     # ... does not reach the plan
    fresh = model.compile()
    assert not np.allclose(fresh(x), before)
    np.testing.assert_array_equal(fresh(x), model.forward(x, training=False,
                                                          need_cache=False))


def test_plan_keeps_the_model_facts():
    model = built("lenet5")
    model.class_names = tuple("abcdefghij")
    model.meta = {"saved_at": "now"}
    plan = model.compile()
    assert plan.model.class_names == model.class_names
    assert plan.model.meta == {"saved_at": "now"} and plan.model.meta is not model.meta
    assert plan.model.normalization == model.normalization


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 28, 28), np.float32), r"x must be a float32 array of shape \(N, 1, 28, 28\)"),
    (np.zeros((2, 1, 28, 27), np.float32), r"got float32 \(2, 1, 28, 27\)"),
    (np.zeros((2, 1, 28, 28), np.float64), r"got float64"),
    ([[0.0]], r"got list"),
])
def test_plan_refuses_bad_input(bad, message):
    plan = built("lenet5").compile()
    with pytest.raises(ValueError, match=message):
        plan(bad)


def test_plan_of_no_images_and_of_a_strided_view():
    model = built("lenet5")
    plan = model.compile()
    assert plan(batch(model, 0)).shape == (0, 10)
    x = batch(model, 6)
    np.testing.assert_array_equal(plan(x[::2]), model.forward(np.ascontiguousarray(x[::2]),
                                                                training=False,
                                                                need_cache=False))


def test_unbuilt_model_cannot_compile():
    with pytest.raises(RuntimeError, match="not built"):
        build_architecture("lenet5").compile()


def test_plan_shared_by_threads():
    # The kernels run without the GIL: calls overlap, and a call that finds the
    # workspaces in use takes its own. Every answer must be its input's.
    model = built("convnet")
    plan = model.compile(threads=1)
    inputs = [batch(model, n, seed=n) for n in (1, 2, 3, 1, 2, 3)]
    expected = [plan(x) for x in inputs]
    errors = []

    def worker(k):
        for i in range(40):
            j = (i + k) % len(inputs)
            if not np.array_equal(plan(inputs[j]), expected[j]):
                errors.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- the prepared steps on their own -------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(N=st.integers(0, 5), C=st.integers(1, 4), H=st.integers(1, 10), W=st.integers(1, 10),
       F=st.integers(1, 9), KH=st.integers(1, 3), KW=st.integers(1, 3),
       sh=st.integers(1, 2), sw=st.integers(1, 2), ph=st.integers(0, 2), pw=st.integers(0, 2),
       PK=st.integers(1, 3), ps=st.integers(1, 3), threads=st.sampled_from([1, 2, 4]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_conv_relu_pool_plan_equals_the_reference(N, C, H, W, F, KH, KW, sh, sw, ph, pw, PK,
                                                  ps, threads, dtype, seed):
    assume(H + 2 * ph >= KH and W + 2 * pw >= KW)
    Hc, Wc = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    assume(Hc >= PK and Wc >= PK)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    plan = ops.ConvReLUPoolPlan(w, b, (C, H, W), (sh, sw), (ph, pw), PK, ps, threads=threads)
    out_shape = (F, (Hc - PK) // ps + 1, (Wc - PK) // ps + 1)
    assert plan.output_shape == out_shape and plan.input_shape == (C, H, W)
    got = plan(x)
    assert got.shape == (N,) + out_shape and got.dtype == np.dtype(dtype)
    if N == 0:      # (the reference takes no empty batch)
        return
    expected, _ = ref_crp.conv2d_relu_maxpool2d_forward(x, w, b, (sh, sw), (ph, pw), PK, ps)
    assert_close(got, expected, dtype, name="ConvReLUPoolPlan")
    # the plan is reusable: a second call on other numbers
    x2 = rng.standard_normal(x.shape).astype(dtype)
    assert_close(plan(x2), ref_crp.conv2d_relu_maxpool2d_forward(
        x2, w, b, (sh, sw), (ph, pw), PK, ps)[0], dtype, name="second call")


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_prepared_steps_write_every_output(monkeypatch, threads):
    # Workspaces and outputs made by np.empty come NaN-filled: a value a kernel
    # forgot to write would show.
    poison_kernel_outputs(monkeypatch)
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, 6, 14, 14)).astype(np.float32)
        w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
        b = rng.standard_normal(16).astype(np.float32)
        plan = ops.ConvReLUPoolPlan(w, b, (6, 14, 14), 1, 0, 2, threads=threads)
        expected, _ = ref_crp.conv2d_relu_maxpool2d_forward(x, w, b, 1, 0, 2)
        assert_close(plan(x), expected, np.float32)
        d = rng.standard_normal((n, 400)).astype(np.float32)
        dw = rng.standard_normal((120, 400)).astype(np.float32)
        db = rng.standard_normal(120).astype(np.float32)
        dense = ops.DensePlan(dw, db, relu=True, threads=threads)
        assert_close(dense(d), ref_dense.dense_forward(d, dw, db, relu=True)[0], np.float32)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(0, 6), D=st.integers(1, 40), M=st.integers(1, 40), relu=st.booleans(),
       threads=st.sampled_from([1, 2, 4]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_dense_plan_equals_the_reference(N, D, M, relu, threads, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(dtype)
    w = rng.standard_normal((M, D)).astype(dtype)
    b = rng.standard_normal(M).astype(dtype)
    plan = ops.DensePlan(w, b, relu=relu, threads=threads)
    assert plan.input_shape == (D,) and plan.output_shape == (M,)
    got = plan(x)
    assert got.shape == (N, M) and got.dtype == np.dtype(dtype)
    if N:           # (the reference takes no empty batch)
        assert_close(got, ref_dense.dense_forward(x, w, b, relu=relu)[0], dtype,
                     name="DensePlan")


def test_prepared_steps_refuse_bad_input_and_bad_geometry():
    w = np.ones((4, 2, 3, 3), np.float32)
    b = np.zeros(4, np.float32)
    plan = ops.ConvReLUPoolPlan(w, b, (2, 8, 8), 1, 1, 2)
    for bad in (np.ones((1, 3, 8, 8), np.float32), np.ones((1, 2, 8, 8), np.float64),
                np.ones((2, 8, 8), np.float32), "x"):
        with pytest.raises(ValueError, match=r"x must be a float32 array of shape \(N, 2, 8, 8\)"):
            plan(bad)
    with pytest.raises(ValueError, match="input_shape must be one image's"):
        ops.ConvReLUPoolPlan(w, b, (8, 8), 1, 1, 2)
    with pytest.raises(ValueError, match="input_shape"):
        ops.ConvReLUPoolPlan(w, b, (2, 0, 8), 1, 1, 2)
    with pytest.raises(ValueError):                      # 2 channels planned, w has 2: 3 given
        ops.ConvReLUPoolPlan(w, b, (3, 8, 8), 1, 1, 2)
    with pytest.raises(ValueError, match="larger than"):
        ops.ConvReLUPoolPlan(w, b, (2, 2, 2), 1, 0, 2)
    dense = ops.DensePlan(np.ones((3, 5), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"x must be a float32 array of shape \(N, 5\)"):
        dense(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="one bias per output"):
        ops.DensePlan(np.ones((3, 5), np.float32), np.zeros(4, np.float32))


def test_plan_of_a_model_holding_something_that_cannot_be_copied():
    model = built("lenet5")
    model.handle = threading.Lock()       # e.g. a communicator a caller hung on the model
    plan = model.compile()
    assert plan.model.handle is model.handle
    x = batch(model, 2)
    np.testing.assert_array_equal(plan(x), model.forward(x, training=False, need_cache=False))


def test_plan_without_a_copy_runs_the_models_own_arrays():
    # What the service does (a served model never changes): no second copy of the
    # weights; the answers are the same.
    model = built("convnet_bn")
    plan = model.compile(copy=False)
    assert plan.model is model
    x = batch(model, 9)
    np.testing.assert_array_equal(plan(x), model.forward(x, training=False, need_cache=False))
    dense = model.layers[-1]
    before = plan(x)
    dense.params["w"] *= 2          # the plan reads the model's own dense weights
    assert not np.array_equal(plan(x), before)
    with pytest.raises(ValueError, match="copy=False runs the model's own layers"):
        model.compile(threads=1, copy=False)
    assert model.compile(threads=2, copy=False).model is model
