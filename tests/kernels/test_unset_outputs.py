"""Every element of every compiled kernel's output is written: the wrappers'
np.empty hands out NaN-filled arrays here (tests/helpers.NaNFilledNumPy), so an
element a kernel leaves unset fails the comparison every run, whatever memory
the allocator happened to return."""
import numpy as np
import pytest

from cnn.backends import get_backend
from tests.helpers import assert_close, compare_backends

DTYPES = (np.float32, np.float64)
pytestmark = pytest.mark.usefixtures("nan_outputs")


def test_the_outputs_really_start_as_nan():
    import cnn._pool
    assert np.isnan(cnn._pool.np.empty(3)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
# odd and even sizes: the 2x2 stride-2 fast paths leave a last row/column uncovered
@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (2, 3, 4, 5), (2, 3, 5, 4), (1, 2, 7, 9)])
@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (2, 3), ((2, 3), (3, 1))])
def test_pooling_writes_every_element(op, shape, kernel, stride, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    compare_backends(op, (x, kernel, stride), grad_names=("dx",))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 2), (2, 1), ((3, 2), (0, 1))])
def test_convolutions_write_every_element(stride, pad, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 7, 6)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 2)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    compare_backends("conv2d", (x, w, b), dict(stride=stride, pad=pad))
    compare_backends("conv2d_relu_maxpool2d", (x, w, b), dict(stride=stride, pad=pad,
                                                             pool_kernel=2, pool_stride=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_ops_write_every_element(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5, 7)).astype(dtype)
    compare_backends("relu", (x,))
    compare_backends("batchnorm2d", (x, np.ones(4, dtype), np.zeros(4, dtype),
                                     np.zeros(4, dtype), np.ones(4, dtype)))
    cy, ref = get_backend("cython"), get_backend("python")
    logits, labels = rng.standard_normal((9, 10)).astype(dtype), np.arange(9) % 10
    loss, d = cy.softmax_cross_entropy(logits, labels)
    want_loss, want_d = ref.softmax_cross_entropy(logits, labels)
    assert_close(d, want_d, dtype, "softmax dlogits")
    assert loss == pytest.approx(want_loss, rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
# Worth the threads (>= 4M multiply-adds each), and neither M nor D a multiple of
# the thread count: the last thread's block of columns must reach the last column.
@pytest.mark.parametrize("N,D,M,threads", [(64, 1100, 257, 2), (32, 2501, 163, 3)])
def test_dense_thread_blocks_cover_every_column(N, D, M, threads, dtype):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((N, D)).astype(dtype), rng.standard_normal((M, D)).astype(dtype)
    b, dout = rng.standard_normal(M).astype(dtype), rng.standard_normal((N, M)).astype(dtype)
    cy = get_backend("cython")
    out, cache = cy.dense_forward(x, w, b, threads=threads)
    dx, dw, db = cy.dense_backward(dout, cache, threads=threads)
    x64, w64, d64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    assert_close(out, (x64 @ w64.T + b).astype(dtype), dtype, "out")
    assert_close(dx, (d64 @ w64).astype(dtype), dtype, "dx")
    assert_close(dw, (d64.T @ x64).astype(dtype), dtype, "dw")
    assert_close(db, d64.sum(axis=0).astype(dtype), dtype, "db")
