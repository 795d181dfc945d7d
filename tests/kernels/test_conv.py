"""conv2d: Cython vs NumPy im2col vs naive loops, and numerical gradients."""
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


def conv_inputs(rng, N, C, H, W, F, KH, KW, dtype):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 9),
       F=st.integers(1, 4), KH=st.integers(1, 4), KW=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_backends_agree_on_random_shapes(N, C, H, W, F, KH, KW, sh, sw, ph, pw, dtype, seed):
    assume(KH <= H + 2 * ph and KW <= W + 2 * pw)
    x, w, b = conv_inputs(np.random.default_rng(seed), N, C, H, W, F, KH, KW, dtype)
    out, grads = compare_backends("conv2d", (x, w, b), dict(stride=(sh, sw), pad=(ph, pw)),
                                  backends=("naive", "python", "cython"), seed=seed,
                                  grad_names=GRADS)
    assert out.shape == (N, F, (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1)
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cython_matches_im2col_on_a_network_sized_layer(dtype):
    x, w, b = conv_inputs(np.random.default_rng(1), 8, 16, 14, 14, 32, 3, 3, dtype)
    compare_backends("conv2d", (x, w, b), dict(stride=1, pad=1), grad_names=GRADS)


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
@pytest.mark.parametrize("stride,pad,kernel", [(1, 0, (3, 3)), (2, 1, (3, 2)),
                                               ((1, 3), (2, 0), (2, 3)), (3, 2, (1, 1))])
def test_gradients_match_central_differences(backend, stride, pad, kernel):
    ops = get_backend(backend)
    x, w, b = conv_inputs(np.random.default_rng(2), 2, 2, 6, 5, 3, *kernel, np.float64)
    check_gradients(lambda x, w, b: ops.conv2d_forward(x, w, b, stride=stride, pad=pad),
                    ops.conv2d_backward, [x, w, b], wrt=(0, 1, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_counts_give_the_same_result(dtype):
    ops = get_backend("cython")
    x, w, b = conv_inputs(np.random.default_rng(3), 7, 3, 11, 9, 5, 3, 3, dtype)
    dout = np.random.default_rng(4).standard_normal((7, 5, 6, 5)).astype(dtype)
    results = []
    for threads in (1, 2, 4):
        out, cache = ops.conv2d_forward(x, w, b, stride=2, pad=1, threads=threads)
        results.append((out,) + ops.conv2d_backward(dout, cache, threads=threads))
    for other in results[1:]:
        for got, want, name in zip(other, results[0], ("out",) + GRADS):
            assert_close(got, want, dtype, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_image_split_over_filter_blocks_gives_the_same_result(dtype):
    from cnn._threads import forward_split
    assert forward_split(3, 1, 64, 288 * 28 * 30) == (3, 3)
    ops = get_backend("cython")
    x, w, b = conv_inputs(np.random.default_rng(8), 1, 32, 28, 28, 64, 3, 3, dtype)
    ref, _ = ops.conv2d_forward(x, w, b, pad=1, threads=1)
    for threads in (2, 3):
        out, _ = ops.conv2d_forward(x, w, b, pad=1, threads=threads)
        assert_close(out, ref, dtype, f"{threads} threads")


def test_threads_sum_db_without_losing_updates():
    """A race on the per-thread db parts shows as lost additions (helpers).
    (The float64 kernel is the same template.)"""
    ops = get_backend("cython")
    assert_threads_sum_db_exactly(
        ops.conv2d_forward,
        lambda dout, cache: ops.conv2d_backward(dout, cache, threads=2, need_dx=False))


def test_one_by_one_kernel_is_a_matrix_product():
    rng = np.random.default_rng(5)
    x, w, b = conv_inputs(rng, 2, 4, 3, 3, 5, 1, 1, np.float64)
    for name in ("cython", "python", "naive"):
        out, _ = get_backend(name).conv2d_forward(x, w, b)
        expected = np.einsum("nchw,fc->nfhw", x, w[:, :, 0, 0]) + b[None, :, None, None]
        assert_close(out, expected, np.float64, name)


def test_padding_only_window_sees_just_the_bias():
    # With pad >= kernel, corner outputs read nothing but zeros.
    x, w, b = conv_inputs(np.random.default_rng(6), 1, 1, 2, 2, 2, 2, 2, np.float32)
    for name in ("cython", "python", "naive"):
        out, _ = get_backend(name).conv2d_forward(x, w, b, stride=3, pad=2)
        assert out.shape == (1, 2, 2, 2)
        np.testing.assert_array_equal(out[0, :, 0, 0], b)


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_need_dx_false_skips_dx_and_keeps_dw_db(backend, dtype):
    ops = get_backend(backend)
    x, w, b = conv_inputs(np.random.default_rng(7), 3, 2, 7, 6, 4, 3, 2, dtype)
    out, cache = ops.conv2d_forward(x, w, b, stride=(2, 1), pad=1)
    dout = np.random.default_rng(8).standard_normal(out.shape).astype(dtype)
    dx, dw, db = ops.conv2d_backward(dout, cache)
    none, dw2, db2 = ops.conv2d_backward(dout, cache, need_dx=False)
    assert dx is not None and dx.shape == x.shape
    assert none is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)
