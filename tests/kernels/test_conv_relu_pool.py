"""conv2d -> relu -> maxpool2d fused: the Cython kernel against the composition
of the three ops (python and naive backends), gradients, edge rules, bad input."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from cnn.backends import get_backend
from tests.helpers import (
    assert_close,
    assert_threads_sum_db_exactly,
    check_gradients,
    compare_backends,
)

GRADS = ("dx", "dw", "db")
OP = "conv2d_relu_maxpool2d"


def inputs(rng, N, C, H, W, F, KH, KW, dtype):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b


def unfused(ops, x, w, b, stride, pad, pool_kernel, pool_stride, threads=None):
    """The three ops one by one, on the same backend."""
    c, _ = ops.conv2d_forward(x, w, b, stride, pad, threads=threads)
    r, _ = ops.relu_forward(c, threads=threads)
    return ops.maxpool2d_forward(r, pool_kernel, pool_stride, threads=threads)[0]


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 9),
       F=st.integers(1, 4), KH=st.integers(1, 3), KW=st.integers(1, 3),
       sh=st.integers(1, 2), sw=st.integers(1, 2), ph=st.integers(0, 2), pw=st.integers(0, 2),
       PKH=st.integers(1, 3), PKW=st.integers(1, 3), psh=st.integers(1, 3),
       psw=st.integers(1, 3), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_backends_agree_on_random_shapes(N, C, H, W, F, KH, KW, sh, sw, ph, pw, PKH, PKW,
                                         psh, psw, dtype, seed):
    assume(KH <= H + 2 * ph and KW <= W + 2 * pw)
    Hc, Wc = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    assume(PKH <= Hc and PKW <= Wc)
    x, w, b = inputs(np.random.default_rng(seed), N, C, H, W, F, KH, KW, dtype)
    kwargs = dict(stride=(sh, sw), pad=(ph, pw), pool_kernel=(PKH, PKW),
                  pool_stride=(psh, psw))
    out, grads = compare_backends(OP, (x, w, b), kwargs, backends=("naive", "python", "cython"),
                                  seed=seed, grad_names=GRADS)
    assert out.shape == (N, F, (Hc - PKH) // psh + 1, (Wc - PKW) // psw + 1)
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]
    # Inference (no argmax kept; 2x2 stride-2 windows have their own loop) computes
    # the same output as training's forward, for every pool kernel and stride.
    cy = get_backend("cython")
    cached, _ = cy.conv2d_relu_maxpool2d_forward(x, w, b, **kwargs)
    lean, none = cy.conv2d_relu_maxpool2d_forward(x, w, b, **kwargs, need_cache=False)
    assert none is None
    np.testing.assert_array_equal(lean, cached, err_msg=f"need_cache=False, {kwargs}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,pad", [((8, 1, 28, 28, 32, 3, 3), 1),    # convnet conv1
                                       ((8, 32, 14, 14, 64, 3, 3), 1),   # convnet conv2
                                       ((8, 1, 28, 28, 6, 5, 5), 2),     # lenet5 conv1
                                       ((8, 6, 14, 14, 16, 5, 5), 0)])   # lenet5 conv2
def test_cython_matches_the_three_ops_on_network_layers(dtype, shape, pad):
    x, w, b = inputs(np.random.default_rng(1), *shape, dtype)
    compare_backends(OP, (x, w, b), dict(stride=1, pad=pad), grad_names=GRADS)
    cy = get_backend("cython")
    out, _ = cy.conv2d_relu_maxpool2d_forward(x, w, b, 1, pad)
    assert_close(out, unfused(cy, x, w, b, 1, pad, 2, None), dtype, "cython fused vs unfused")


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
@pytest.mark.parametrize("stride,pad,kernel,pool", [(1, 1, (3, 3), (2, None)),
                                                    (2, 0, (2, 3), (2, 1)),
                                                    ((1, 2), (1, 0), (3, 2), ((2, 1), None))])
def test_gradients_match_central_differences(backend, stride, pad, kernel, pool):
    ops = get_backend(backend)
    x, w, b = inputs(np.random.default_rng(2), 2, 2, 7, 6, 3, *kernel, np.float64)
    # Keep every conv output away from 0 and window maxima apart, where relu
    # and max have kinks that central differences would straddle.
    check_gradients(lambda x, w, b: getattr(ops, f"{OP}_forward")(
                        x, w, b, stride, pad, pool[0], pool[1]),
                    getattr(ops, f"{OP}_backward"), [x, w, b], wrt=(0, 1, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 2, 5])
def test_thread_counts_and_inference_give_the_same_result(dtype, N):
    """N < threads splits each image's filters over the threads (the layer is
    large enough for that: 15M multiply-adds per image)."""
    from cnn._threads import forward_split
    assert forward_split(4, 1, 64, 288 * 28 * 30)[0] > 1
    ops = get_backend("cython")
    x, w, b = inputs(np.random.default_rng(3), N, 32, 28, 28, 64, 3, 3, dtype)
    dout = np.random.default_rng(4).standard_normal((N, 64, 14, 14)).astype(dtype)
    results = []
    for threads in (1, 2, 4):
        out, cache = ops.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, threads=threads)
        lean, none = ops.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, threads=threads,
                                                        need_cache=False)
        assert none is None
        np.testing.assert_array_equal(lean, out)
        results.append((out,) + ops.conv2d_relu_maxpool2d_backward(dout, cache,
                                                                   threads=threads))
    for other in results[1:]:
        for got, want, name in zip(other, results[0], ("out",) + GRADS):
            assert_close(got, want, dtype, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool_kernel", [2, (2, 3), 3])
@pytest.mark.parametrize("pool_stride", [1, 2, 3, (2, 1), (1, 2)])
def test_inference_matches_training_for_every_pool_stride(pool_kernel, pool_stride, dtype):
    """need_cache=False takes an argmax-free loop for 2x2 stride-2 windows only: a
    maxpool2s1 model must predict the same fused as unfused, in inference too."""
    x, w, b = inputs(np.random.default_rng(10), 2, 2, 9, 8, 3, 3, 3, dtype)
    ops = get_backend("cython")
    cached, _ = ops.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, pool_kernel, pool_stride)
    lean, _ = ops.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, pool_kernel, pool_stride,
                                                need_cache=False)
    np.testing.assert_array_equal(lean, cached)
    assert_close(lean, unfused(ops, x, w, b, 1, 1, pool_kernel, pool_stride), dtype,
                 "inference vs the three ops")


def test_model_with_a_stride_1_pool_predicts_the_same_fused_and_unfused():
    from cnn.architectures import build_architecture
    model = build_architecture("conv4k3p1-relu-maxpool2s1-flatten-dense10").build(seed=0)
    assert type(model.steps()[0]).__name__ == "ConvReLUMaxPool"
    x = np.random.default_rng(11).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    fused = model.predict_proba(x)
    model.fuse = False
    np.testing.assert_allclose(model.predict_proba(x), fused, rtol=1e-5, atol=1e-6)


def test_threads_sum_db_without_losing_updates():
    """A race on the per-thread db parts shows as lost additions (helpers).
    (The float64 kernel is the same template.)"""
    ops = get_backend("cython")
    assert_threads_sum_db_exactly(
        lambda x, w, b: ops.conv2d_relu_maxpool2d_forward(x, w, b, pool_kernel=1),
        lambda dout, cache: ops.conv2d_relu_maxpool2d_backward(
            dout, cache, threads=2, need_dx=False))


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
def test_first_layer_may_skip_dx(backend):
    ops = get_backend(backend)
    x, w, b = inputs(np.random.default_rng(5), 2, 1, 8, 8, 4, 3, 3, np.float64)
    out, cache = getattr(ops, f"{OP}_forward")(x, w, b, 1, 1)
    dout = np.ones_like(out)
    dx, dw, db = getattr(ops, f"{OP}_backward")(dout, cache, need_dx=False)
    _, dw2, db2 = getattr(ops, f"{OP}_backward")(dout, cache)
    assert dx is None
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, db2)


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
def test_windows_without_a_positive_value_pass_no_gradient(backend):
    """All conv outputs <= 0: out is 0 and nothing flows back, ties of zeros included."""
    ops = get_backend(backend)
    x = np.ones((1, 1, 4, 4))
    w = -np.ones((2, 1, 1, 1))
    b = np.array([0.0, 1.0])        # filter 1: conv output exactly 0 everywhere
    out, cache = getattr(ops, f"{OP}_forward")(x, w, b)
    np.testing.assert_array_equal(out, 0)
    dx, dw, db = getattr(ops, f"{OP}_backward")(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx, 0)
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_adds_the_bias_after_the_max_with_the_same_numbers(dtype):
    """Inference's 2x2/2 loop computes the conv without its bias and adds it to each
    window's max: the same numbers as training's forward, bit for bit, also where a
    plane holds a NaN (redone with the exact rule on the biased plane) and where the
    bias decides the relu (max + bias crossing 0)."""
    ops = get_backend("cython")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 2, 6, 8)).astype(dtype)
    x[1, 0, 2, 5] = np.nan
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    b = np.array([0.7, -1.3, 2.5, -0.01], dtype)
    for threads in (1, 2):
        cached, _ = ops.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, threads=threads)
        lean, _ = ops.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1, threads=threads,
                                                    need_cache=False)
        np.testing.assert_array_equal(lean, cached)
        assert np.isnan(lean[1]).any() and not np.isnan(lean[[0, 2]]).any()
        assert (lean == 0).any() and (lean > 0).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_and_nan_follow_the_unfused_rules(dtype):
    """Equal maxima go to the last one; a NaN wins its window and stops the gradient."""
    ops, ref = get_backend("cython"), get_backend("naive")
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 0, :2] = 3          # a tie in window (0, 0): the second 3 wins
    x[0, 0, 1, 3] = np.nan      # window (0, 1) holds a NaN
    x[0, 0, 3, 3] = -1          # window (1, 1): max is 0, relu passes nothing
    w = np.ones((1, 1, 1, 1), dtype)
    b = np.zeros(1, dtype)
    out, cache = ops.conv2d_relu_maxpool2d_forward(x, w, b)
    want, ref_cache = ref.conv2d_relu_maxpool2d_forward(x, w, b)
    np.testing.assert_array_equal(out, want)
    assert np.isnan(out[0, 0, 0, 1]) and out[0, 0, 0, 0] == 3
    # Inference's argmax-free 2x2 path hands a plane with a NaN to the exact rule.
    lean, _ = ops.conv2d_relu_maxpool2d_forward(x, w, b, need_cache=False)
    np.testing.assert_array_equal(lean, want)
    dout = np.arange(1, 5, dtype=dtype).reshape(1, 1, 2, 2)
    dx, dw, db = ops.conv2d_relu_maxpool2d_backward(dout, cache)
    rdx, rdw, rdb = ref.conv2d_relu_maxpool2d_backward(dout, ref_cache)
    np.testing.assert_array_equal(dx, rdx)
    assert dx[0, 0, 0, 1] == 1 and dx[0, 0, 0, 0] == 0   # the last of the tied 3s
    assert not dx[0, 0, :2, 2:].any()                     # NaN window: no gradient
    np.testing.assert_array_equal(db, rdb)


def test_model_fuses_conv_relu_pool_and_computes_the_same():
    from cnn.architectures import build_architecture
    from cnn.layers import ConvReLUMaxPool
    model = build_architecture("lenet5").build(seed=0, dtype=np.float64, backend="cython")
    kinds = [type(s).__name__ for s in model.steps()]
    assert kinds == ["ConvReLUMaxPool", "ConvReLUMaxPool", "Flatten", "DenseReLU", "DenseReLU",
                     "Dense"]
    x = np.random.default_rng(6).standard_normal((3, 1, 28, 28))
    ops = get_backend("cython")
    results = []
    for fuse in (True, False):
        model.fuse = fuse
        assert any(isinstance(s, ConvReLUMaxPool) for s in model.steps()) == fuse
        loss, d = ops.softmax_cross_entropy(model.forward(x, training=True), np.arange(3))
        dx = model.backward(d)
        results.append((loss, dx, [g[n].copy() for _, _, g, n in model.parameters()]))
    (l1, dx1, g1), (l2, dx2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert_close(dx1, dx2, np.float64, "dx")
    for a, b in zip(g1, g2):
        assert_close(a, b, np.float64, "param grad")


# -- bad input ------------------------------------------------------------------
def test_pool_larger_than_the_conv_output_is_refused():
    x, w, b = inputs(np.random.default_rng(7), 1, 1, 5, 5, 2, 3, 3, np.float32)
    for name in ("cython", "python", "naive"):
        with pytest.raises(ValueError,
                           match="pooling kernel 4x4 is larger than the conv output 3x3"):
            getattr(get_backend(name), f"{OP}_forward")(x, w, b, 1, 0, 4)


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
def test_backward_after_inference_says_why(backend):
    ops = get_backend(backend)
    x, w, b = inputs(np.random.default_rng(8), 1, 1, 6, 6, 2, 3, 3, np.float32)
    out, cache = getattr(ops, f"{OP}_forward")(x, w, b, need_cache=False)
    with pytest.raises(ValueError, match="need_cache=False"):
        getattr(ops, f"{OP}_backward")(np.ones_like(out), cache)


def test_tampered_cache_is_caught_or_harmless():
    ops = get_backend("cython")
    x, w, b = inputs(np.random.default_rng(9), 2, 3, 8, 8, 4, 3, 3, np.float32)
    out, cache = ops.conv2d_relu_maxpool2d_forward(x, w, b, 1, 1)
    dout = np.ones_like(out)
    *head, arg = cache
    with pytest.raises(TypeError, match="int64"):
        ops.conv2d_relu_maxpool2d_backward(dout, (*head, arg.astype(np.int32)))
    with pytest.raises(ValueError, match="pooled output's shape"):
        ops.conv2d_relu_maxpool2d_backward(dout, (*head, arg[:, :2]))
    with pytest.raises(ValueError, match="dout must have"):
        ops.conv2d_relu_maxpool2d_backward(dout[:1], cache)
    # Indices outside the conv output are skipped, never written: the same
    # gradients as a dout that is zero at those outputs.
    spots = [tuple(i) for i in np.argwhere(arg >= 0)[[0, -1]]]
    wild, skipped = arg.copy(), dout.copy()
    for spot, value in zip(spots, (10**12, -10**12)):
        wild[spot], skipped[spot] = value, 0
    got = ops.conv2d_relu_maxpool2d_backward(dout, (*head, wild))
    want = ops.conv2d_relu_maxpool2d_backward(skipped, cache)
    for g, r, name in zip(got, want, GRADS):
        assert_close(g, r, np.float32, name)
    assert not np.array_equal(want[2], ops.conv2d_relu_maxpool2d_backward(dout, cache)[2])
