"""relu: Cython vs NumPy vs naive loops, numerical gradients, threads and chunking."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnn.backends import get_backend
from tests.helpers import check_gradients, compare_backends

BACKENDS = ("naive", "python", "cython")


def relu_input(rng, shape, dtype):
    """Normal values with some exact zeros (x == 0 is not > 0: no gradient)."""
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.1] = 0
    return x


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_backends_agree_on_random_shapes(shape, dtype, seed):
    x = relu_input(np.random.default_rng(seed), tuple(shape), dtype)
    out, (dx,) = compare_backends("relu", (x,), backends=BACKENDS, seed=seed,
                                  grad_names=("dx",))
    assert out.shape == x.shape and out.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 1, 5), (64, 32, 13, 13), (300007,)])
def test_cython_matches_numpy_exactly(shape, dtype):
    # Sizes below, at and well above the kernel's chunk and per-thread grain,
    # with a ragged last chunk.
    rng = np.random.default_rng(1)
    x = relu_input(rng, shape, dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    results = []
    for name in ("python", "cython"):
        ops = get_backend(name)
        out, cache = ops.relu_forward(x)
        results.append((out, ops.relu_backward(dout, cache)))
    (out, dx), (want_out, want_dx) = results[1], results[0]
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    np.testing.assert_array_equal(dx, np.where(x > 0, dout, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_counts_give_the_same_result(dtype):
    ops = get_backend("cython")
    rng = np.random.default_rng(2)
    x = relu_input(rng, (5, 7, 97, 101), dtype)          # enough for 4 threads
    dout = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for threads in (1, 2, 4):
        out, cache = ops.relu_forward(x, threads=threads)
        results.append((out, ops.relu_backward(dout, cache, threads=threads)))
    for out, dx in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(13,), (2, 3, 4, 5)])
def test_gradients_match_central_differences(backend, shape):
    ops = get_backend(backend)
    rng = np.random.default_rng(3)
    # away from the kink at 0, so the finite-difference step never crosses it
    x = rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    check_gradients(ops.relu_forward, ops.relu_backward, [x], wrt=(0,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_values_at_zero_and_nan(backend, dtype):
    ops = get_backend(backend)
    x = np.array([-2.0, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf], dtype)
    out, cache = ops.relu_forward(x)
    np.testing.assert_array_equal(out, np.array([0, 0, 0, 1e-30, 3, np.nan, 0, np.inf], dtype))
    dx = ops.relu_backward(np.arange(1, 9, dtype=dtype), cache)
    np.testing.assert_array_equal(dx, np.array([0, 0, 0, 4, 5, 0, 0, 8], dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_is_not_modified_and_output_is_new(backend):
    ops = get_backend(backend)
    x = np.random.default_rng(4).standard_normal((4, 5))
    keep = x.copy()
    out, cache = ops.relu_forward(x)
    dout = np.ones_like(x)
    dx = ops.relu_backward(dout, cache)
    np.testing.assert_array_equal(x, keep)
    assert not np.shares_memory(out, x) and not np.shares_memory(dx, dout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    ops = get_backend(backend)
    base = np.random.default_rng(5).standard_normal((6, 8, 5))
    x = base.transpose(2, 0, 1)[:, ::2]
    out, cache = ops.relu_forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    dout = np.random.default_rng(6).standard_normal((8, 6, 5)).transpose(2, 1, 0)[:, ::2]
    np.testing.assert_array_equal(ops.relu_backward(dout, cache), np.where(x > 0, dout, 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_rechecks_the_cache(backend):
    ops = get_backend(backend)
    x = np.random.default_rng(7).standard_normal((3, 4))
    out, cache = ops.relu_forward(x)
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        ops.relu_backward(np.ones((4, 3)), cache)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.relu_backward(np.ones((3, 4)), cache.astype(np.int64))
