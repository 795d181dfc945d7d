"""dense: the Cython kernel against the NumPy twin and the per-sample loop,
gradients against central differences, thread counts, and argument errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnn.backends import get_backend
from tests.helpers import assert_close, check_gradients, compare_backends

DTYPES = (np.float32, np.float64)
GRADS = ("dx", "dw", "db")


def make_dense(rng, N, D, M, dtype):
    x = rng.standard_normal((N, D)).astype(dtype)
    w = rng.standard_normal((M, D)).astype(dtype)
    b = rng.standard_normal(M).astype(dtype)
    return x, w, b


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 9), D=st.integers(1, 17), M=st.integers(1, 13),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_backends_agree_small(N, D, M, dtype, seed):
    rng = np.random.default_rng(seed)
    args = make_dense(rng, N, D, M, dtype)
    out, grads = compare_backends("dense", args, backends=("cython", "python", "naive"),
                                  seed=seed, grad_names=GRADS)
    assert out.shape == (N, M) and out.dtype == np.dtype(dtype)
    assert [g.shape for g in grads] == [(N, D), (M, D), (M,)]
    assert all(g.dtype == np.dtype(dtype) for g in grads)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 70), D=st.integers(1, 150), M=st.integers(1, 200),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_backends_agree_larger(N, D, M, dtype, seed):
    # M past one 64-column db block, D and N large enough for BLAS's blocked paths.
    rng = np.random.default_rng(seed)
    compare_backends("dense", make_dense(rng, N, D, M, dtype), seed=seed, grad_names=GRADS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_worked_example(dtype):
    """The batch of the reference notes: out and db come out as drawn there."""
    w = np.array([[1, 2, 3, 2, 1, 2, 3, 2], [2, 1, 2, 3, 2, 1, 2, 3],
                  [3, 2, 1, 2, 3, 2, 1, 2]], dtype=dtype)
    b = np.array([-1, 1, 2], dtype=dtype)
    x = np.array([[7, 8, 8, 9, 8, 7, 7, 8], [9, 5, 7, 9, 9, 9, 8, 8]], dtype=dtype)
    expected = np.array([[123, 127, 126], [124, 132, 133]], dtype=dtype)
    for name in ("cython", "python", "naive"):
        backend = get_backend(name)
        out, cache = backend.dense_forward(x, w, b)
        np.testing.assert_array_equal(out, expected)
        dx, dw, db = backend.dense_backward(out, cache)
        np.testing.assert_array_equal(db, [247, 259, 259])
        np.testing.assert_array_equal(dx, out @ w)
        np.testing.assert_array_equal(dw, out.T @ x)


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 5, 3), (3, 7, 1), (4, 6, 5)])
def test_gradients(backend, shape):
    N, D, M = shape
    rng = np.random.default_rng(sum(shape))
    b = get_backend(backend)
    check_gradients(b.dense_forward, b.dense_backward, make_dense(rng, N, D, M, np.float64),
                    wrt=(0, 1, 2))


@pytest.mark.parametrize("dtype", DTYPES)
# (64, 1100, 257) is large enough (18M multiply-adds) to really run on 4 threads.
@pytest.mark.parametrize("shape", [(1, 3, 2), (5, 9, 7), (64, 257, 131), (200, 33, 300),
                                   (64, 1100, 257)])
def test_thread_counts_agree(dtype, shape):
    N, D, M = shape
    backend = get_backend("cython")
    rng = np.random.default_rng(7)
    x, w, b = make_dense(rng, N, D, M, dtype)
    dout = rng.standard_normal((N, M)).astype(dtype)
    ref_out, cache = backend.dense_forward(x, w, b, threads=1)
    ref_grads = backend.dense_backward(dout, cache, threads=1)
    for threads in (2, 4):
        out, cache = backend.dense_forward(x, w, b, threads=threads)
        assert_close(out, ref_out, dtype, f"out, {threads} threads")
        grads = backend.dense_backward(dout, cache, threads=threads)
        for name, g, r in zip(GRADS, grads, ref_grads):
            assert_close(g, r, dtype, f"{name}, {threads} threads")
        # Each db column is summed in sample order by one thread, whatever the count.
        np.testing.assert_array_equal(grads[2], ref_grads[2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,M,threads", [
    (1, 9, 6, 1),          # one-row products: out (GEMV on w), dx (GEMV on w.T)
    (5, 4, 1, 1),          # one column: out, untransposed x; dw one row of dout.T
    (6, 1, 4, 1),          # one input: dx and dw one column, contiguous
    (100, 3, 28000, 2),    # dx, dw: a thread's one-column slice of w and x (stride D)
], ids=["one-row", "one-output", "one-input", "thread-slice-of-inputs"])
# (A thread's one-column slice of the outputs, N=1400 D=2000 M=3, is in test_small_cases.)
def test_gemv_branches(N, D, M, threads, dtype):
    """Products with one row or one column of output go to GEMV (pyx/gemm.pxd), each
    way round; a thread's one-column block reads its column with a stride."""
    from cnn._threads import GEMM_WORK_PER_THREAD
    assert threads == 1 or N * D * M >= threads * GEMM_WORK_PER_THREAD
    rng = np.random.default_rng(N + D + M)
    x, w, b = make_dense(rng, N, D, M, dtype)
    dout = rng.standard_normal((N, M)).astype(dtype)
    out, cache = get_backend("cython").dense_forward(x, w, b, threads=threads)
    dx, dw, db = get_backend("cython").dense_backward(dout, cache, threads=threads)
    x64, w64, d64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    assert_close(out, (x64 @ w64.T + b).astype(dtype), dtype, "out")
    assert_close(dx, (d64 @ w64).astype(dtype), dtype, "dx")
    assert_close(dw, (d64.T @ x64).astype(dtype), dtype, "dw")
    assert_close(db, d64.sum(axis=0).astype(dtype), dtype, "db")


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
def test_non_contiguous_inputs(backend):
    rng = np.random.default_rng(3)
    x = np.asfortranarray(rng.standard_normal((6, 5)))
    w = rng.standard_normal((5, 8)).T            # (8, 5) view, not C-contiguous
    b = rng.standard_normal(16)[::2]             # strided
    dout = rng.standard_normal((8, 6)).T         # (6, 8) view
    be = get_backend(backend)
    out, cache = be.dense_forward(x, w, b)
    assert_close(out, x @ w.T + b, np.float64)
    dx, dw, db = be.dense_backward(dout, cache)
    assert_close(dx, dout @ w, np.float64)
    assert_close(dw, dout.T @ x, np.float64)
    assert_close(db, dout.sum(0), np.float64)


@pytest.mark.parametrize("backend", ["cython", "python", "naive"])
def test_argument_errors(backend):
    be = get_backend(backend)
    rng = np.random.default_rng(0)
    x, w, b = make_dense(rng, 4, 5, 3, np.float64)
    with pytest.raises(ValueError, match="feature mismatch"):
        be.dense_forward(x, w[:, :4], b)
    with pytest.raises(ValueError, match="one bias per output"):
        be.dense_forward(x, w, b[:2])
    with pytest.raises(ValueError, match="x must be 2-D"):
        be.dense_forward(x[None], w, b)
    with pytest.raises(ValueError, match="b must be 1-D"):
        be.dense_forward(x, w, b[None])
    with pytest.raises(TypeError, match="w has dtype float32"):
        be.dense_forward(x, w.astype(np.float32), b)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.dense_forward(x.astype(np.int64), w, b)
    with pytest.raises(TypeError, match="numpy array"):
        be.dense_forward(x.tolist(), w, b)
    with pytest.raises(ValueError, match="must not be empty"):
        be.dense_forward(x[:0], w, b)
    out, cache = be.dense_forward(x, w, b)
    with pytest.raises(ValueError, match="forward output's shape"):
        be.dense_backward(out[:, :2], cache)
    with pytest.raises(ValueError, match="forward output's shape"):
        be.dense_backward(out.T, cache)
    with pytest.raises(TypeError, match="dout has dtype float32"):
        be.dense_backward(out.astype(np.float32), cache)


def test_bad_threads():
    be = get_backend("cython")
    x, w, b = make_dense(np.random.default_rng(0), 2, 3, 4, np.float64)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive integer"):
            be.dense_forward(x, w, b, threads=bad)
    with pytest.raises(TypeError, match="positive integer"):
        be.dense_forward(x, w, b, threads=1.5)
