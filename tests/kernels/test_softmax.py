"""softmax_cross_entropy: the Cython kernel against the NumPy twin and the
row loop, the gradient against central differences of the loss, thread
counts, numerical stability, and label errors."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnn.backends import get_backend
from tests.helpers import assert_close, numerical_gradient

DTYPES = (np.float32, np.float64)
BACKENDS = ("cython", "python", "naive")


def make_batch(rng, N, K, dtype, scale=3.0):
    logits = (scale * rng.standard_normal((N, K))).astype(dtype)
    labels = rng.integers(0, K, size=N)
    return logits, labels


def run_all(logits, labels, backends=BACKENDS, **kwargs):
    return {name: get_backend(name).softmax_cross_entropy(logits.copy(), labels.copy(),
                                                          **kwargs)
            for name in backends}


def assert_loss_close(actual, expected, dtype, name):
    assert isinstance(actual, float), f"{name}: loss is {type(actual).__name__}, not float"
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    assert math.isclose(actual, expected, rel_tol=tol, abs_tol=tol), \
        f"{name}: loss {actual} != {expected}"


def assert_agree(results, dtype):
    ref_loss, ref_grad = results["cython"]
    assert ref_grad.dtype == np.dtype(dtype)
    for name, (loss, grad) in results.items():
        assert_loss_close(loss, ref_loss, dtype, f"{name} vs cython")
        assert_close(grad, ref_grad, dtype, f"dlogits: {name} vs cython")


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 9), K=st.integers(1, 13), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([0.1, 3.0, 30.0]), seed=st.integers(0, 2**32 - 1))
def test_backends_agree(N, K, dtype, scale, seed):
    logits, labels = make_batch(np.random.default_rng(seed), N, K, dtype, scale)
    results = run_all(logits, labels)
    assert_agree(results, dtype)
    loss, grad = results["cython"]
    assert loss >= 0
    assert grad.shape == (N, K)
    # softmax rows sum to 1 and the one-hot to 1: each gradient row sums to 0.
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-6 if dtype == np.float32 else 1e-15)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 300), K=st.integers(1, 120), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1))
def test_backends_agree_larger(N, K, dtype, seed):
    logits, labels = make_batch(np.random.default_rng(seed), N, K, dtype)
    assert_agree(run_all(logits, labels, backends=("cython", "python")), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_logits(dtype):
    """Equal logits: p = 1/K everywhere, loss = log K."""
    N, K = 4, 10
    logits = np.full((N, K), 2.5, dtype=dtype)
    labels = np.arange(N)
    expected = np.full((N, K), 1 / K) / N
    expected[np.arange(N), labels] -= 1 / N
    for name, (loss, grad) in run_all(logits, labels).items():
        assert_loss_close(loss, math.log(K), dtype, name)
        assert_close(grad, expected, dtype, f"dlogits {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (3, 2), (5, 7)])
def test_gradient_numerical(backend, shape):
    N, K = shape
    rng = np.random.default_rng(N * 10 + K)
    logits, labels = make_batch(rng, N, K, np.float64, scale=2.0)
    op = get_backend(backend).softmax_cross_entropy
    _, grad = op(logits, labels)
    expected = numerical_gradient(lambda z: np.array(op(z, labels)[0]), logits.copy(), 1.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (7, 5), (1000, 10), (333, 257), (2000, 100)])
def test_thread_counts_agree(dtype, shape):
    logits, labels = make_batch(np.random.default_rng(11), *shape, dtype)
    op = get_backend("cython").softmax_cross_entropy
    ref_loss, ref_grad = op(logits, labels, threads=1)
    for threads in (2, 4):
        loss, grad = op(logits, labels, threads=threads)
        # Rows are independent: dlogits is bit-identical; only the loss's
        # reduction order changes with the thread count.
        np.testing.assert_array_equal(grad, ref_grad)
        assert math.isclose(loss, ref_loss, rel_tol=1e-13), (loss, ref_loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0],       # label far below the max
                       [-1e4, -1e4, -1e4],     # all hugely negative: uniform
                       [1e4, 1e4, -1e4],       # a tie at the top, label at the bottom
                       [1e4, -1e4, -1e4],      # confident and right
                       [-1e4, 1e4, 3e4]], dtype=dtype)
    labels = np.array([1, 2, 2, 0, 2])
    N = len(labels)
    per_row = [2e4, math.log(3), 2e4 + math.log(2), 0.0, 0.0]
    expected_grad = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0],
                              [1, 0, 0], [0, 0, 1]], dtype=np.float64)
    expected_grad[np.arange(N), labels] -= 1
    expected_grad /= N
    for name, (loss, grad) in run_all(logits, labels).items():
        assert math.isfinite(loss), name
        assert np.all(np.isfinite(grad)), name
        assert_loss_close(loss, sum(per_row) / N, dtype, name)
        assert_close(grad, expected_grad, dtype, f"dlogits {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_random(dtype):
    rng = np.random.default_rng(5)
    logits = (rng.choice([-1e4, 1e4], size=(50, 20)) * rng.random((50, 20))).astype(dtype)
    labels = rng.integers(0, 20, size=50)
    results = run_all(logits, labels)
    for name, (loss, grad) in results.items():
        assert math.isfinite(loss) and np.all(np.isfinite(grad)), name
    assert_agree(results, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_errors(backend):
    op = get_backend(backend).softmax_cross_entropy
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*found 3"):
        op(logits, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*found -1"):
        op(logits, np.array([0, -1, 2, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        op(logits, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(TypeError, match="labels must be integers"):
        op(logits, np.array([True, False, True, False]))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        op(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        op(logits, np.array([[0, 1, 2, 1]]))
    with pytest.raises(ValueError, match="logits must be 2-D"):
        op(np.zeros(3), np.array([0]))
    with pytest.raises(TypeError, match="float32 or float64"):
        op(np.zeros((4, 3), dtype=np.int64), np.array([0, 1, 2, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int32, np.uint64])
def test_label_dtypes_accepted(backend, label_dtype):
    op = get_backend(backend).softmax_cross_entropy
    logits, labels = make_batch(np.random.default_rng(2), 6, 4, np.float64)
    loss, grad = op(logits, labels.astype(label_dtype))
    ref_loss, ref_grad = op(logits, labels)
    assert loss == ref_loss
    np.testing.assert_array_equal(grad, ref_grad)
    # A Python list of ints is accepted too.
    assert op(logits, labels.tolist())[0] == ref_loss


def test_inputs_untouched_and_non_contiguous():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((5, 12))
    logits = base[:, ::2]                      # (5, 6) strided view
    labels = np.array([5, 0, 3, 1, 2, 9, 9, 9, 9, 9])[:5]
    before = logits.copy()
    results = run_all(logits, labels)
    np.testing.assert_array_equal(logits, before)
    assert_agree(results, np.float64)
