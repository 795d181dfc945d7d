"""Winograd F(m x m, 3 x 3): the NumPy twin and the Cython kernel against the
direct convolution (cnn.reference.conv) in float64, on random shapes, every
thread count, both tile sizes, the ReLU epilogue and the input gradient.

Tolerances (relative to the largest |output|, inputs N(0, 1), up to 64 channels):
float32 1e-6 for F(2, 3) and 2e-5 for F(4, 3) (its transforms multiply by up to
8 and divide by 24, so rounding grows), float64 1e-12 for both. Measured errors
are about ten times smaller (cnn/reference/winograd.py).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnn._winograd import (
    tiles_per_block,
    winograd_conv2d_forward,
    winograd_conv2d_input_grad,
    winograd_filters,
)
from cnn.reference.conv import conv2d_backward, conv2d_forward
from cnn.reference.pool import maxpool2d_forward
from cnn.reference.winograd import (
    filter_transform,
    winograd_conv2d,
    winograd_conv2d_input_grad as reference_input_grad,
)

TOLERANCE = {(np.float32, 2): 1e-6, (np.float32, 4): 2e-5,
             (np.float64, 2): 1e-12, (np.float64, 4): 1e-12}


def inputs(seed, N, C, H, W, F, dtype):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, C, H, W)).astype(dtype),
            rng.standard_normal((F, C, 3, 3)).astype(dtype),
            rng.standard_normal(F).astype(dtype))


def direct(x, w, b, pad):
    """The float64 direct convolution and its cache."""
    return conv2d_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                          1, pad)


def relative_error(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 6), H=st.integers(1, 13), W=st.integers(1, 13),
       F=st.integers(1, 5), pad=st.integers(0, 2), m=st.sampled_from([2, 4]),
       dtype=st.sampled_from([np.float32, np.float64]), threads=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 2**16))
def test_kernel_and_twin_match_the_direct_convolution(N, C, H, W, F, pad, m, dtype, threads,
                                                      seed):
    if H + 2 * pad < 3 or W + 2 * pad < 3:
        return
    x, w, b = inputs(seed, N, C, H, W, F, dtype)
    want, _ = direct(x, w, b, pad)
    U = winograd_filters(w, m)
    got = winograd_conv2d_forward(x, U, b, pad, m=m, threads=threads)
    twin = winograd_conv2d(x, w, b, pad, m)
    assert got.shape == twin.shape == want.shape and got.dtype == dtype
    assert relative_error(got, want) < TOLERANCE[dtype, m]
    assert relative_error(twin, want) < TOLERANCE[dtype, m]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 32, 14, 14, 64), (1, 32, 14, 14, 64),
                                   (5, 7, 19, 23, 17), (2, 64, 7, 7, 64)])
def test_network_sized_layers(shape, dtype, m, nan_outputs):
    """convnet's and convnet_deep's layers, a batch of one, odd sizes; outputs
    start as NaN, so an element no tile writes shows."""
    N, C, H, W, F = shape
    x, w, b = inputs(1, N, C, H, W, F, dtype)
    want, _ = direct(x, w, b, 1)
    U = winograd_filters(w, m)
    for threads in (1, 2, 4):
        got = winograd_conv2d_forward(x, U, b, 1, m=m, threads=threads)
        assert relative_error(got, want) < TOLERANCE[dtype, m], threads


@pytest.mark.parametrize("m", [2, 4])
def test_blocks_that_end_inside_a_tile_row(m):
    """Blocks of 8 tiles over images of 5 x 5 tiles: blocks start and end in the
    middle of tile rows and span two images."""
    x, w, b = inputs(2, 3, 4, 10 * m // 2, 10 * m // 2, 6, np.float64)
    want, _ = direct(x, w, b, 1)
    U = winograd_filters(w, m)
    total = 3 * (-(-x.shape[2] // m)) ** 2
    assert tiles_per_block(4, 6, m, 8, total, 64) < -(-x.shape[2] // m)
    got = winograd_conv2d_forward(x, U, b, 1, m=m, threads=64)
    assert relative_error(got, want) < 1e-12


@pytest.mark.parametrize("m", [2, 4])
def test_relu_epilogue(m):
    x, w, b = inputs(3, 2, 5, 11, 9, 7, np.float32)
    U = winograd_filters(w, m)
    plain = winograd_conv2d_forward(x, U, b, 1, m=m)
    assert (plain < 0).any()
    assert np.array_equal(winograd_conv2d_forward(x, U, b, 1, m=m, relu=True),
                          np.maximum(plain, 0))


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 5), H=st.integers(2, 12), W=st.integers(2, 12),
       F=st.integers(1, 4), pad=st.integers(0, 2), dtype=st.sampled_from([np.float32, np.float64]),
       threads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_pooled_epilogue(N, C, H, W, F, pad, dtype, threads, seed):
    """pool=True: maxpool 2x2/2 of relu(conv), odd last rows and columns dropped."""
    if H + 2 * pad < 4 or W + 2 * pad < 4:
        return
    x, w, b = inputs(seed, N, C, H, W, F, dtype)
    conv = direct(x, w, b, pad)[0]
    want = maxpool2d_forward(np.maximum(conv, 0), 2)[0]
    got = winograd_conv2d_forward(x, winograd_filters(w, 2), b, pad, m=2, pool=True,
                                  threads=threads)
    assert got.shape == want.shape and got.dtype == dtype
    # relative to the convolution's outputs: ReLU and pooling may keep only small ones
    assert np.abs(got - want).max() < TOLERANCE[dtype, 2] * np.abs(conv).max()


def test_pooled_epilogue_writes_every_output(nan_outputs):
    x, w, b = inputs(8, 64, 32, 14, 14, 64, np.float32)
    conv = direct(x, w, b, 1)[0]
    want = maxpool2d_forward(np.maximum(conv, 0), 2)[0]
    for threads in (1, 2, 4):
        got = winograd_conv2d_forward(x, winograd_filters(w, 2), b, 1, pool=True,
                                      threads=threads)
        assert np.abs(got - want).max() < TOLERANCE[np.float32, 2] * np.abs(conv).max()


@pytest.mark.parametrize("m", [2, 4])
def test_filter_transform_matches_the_twin(m):
    _, w, _ = inputs(4, 1, 6, 3, 3, 5, np.float32)
    U = winograd_filters(w, m)
    assert U.shape == ((m + 2) ** 2, 5, 6) and U.dtype == np.float32
    np.testing.assert_array_equal(U, filter_transform(w, m))


@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_gradient(pad, m, dtype):
    """dx of the direct convolution's backward pass, from the rotated filters."""
    x, w, b = inputs(5, 2, 3, 9, 8, 4, dtype)
    out, cache = direct(x, w, b, pad)
    dout = np.random.default_rng(6).standard_normal(out.shape)
    want = conv2d_backward(dout, cache)[0]
    for got in (winograd_conv2d_input_grad(dout.astype(dtype), w, pad, m=m, threads=2),
                reference_input_grad(dout.astype(dtype), w, pad, m)):
        assert got.shape == x.shape
        assert relative_error(got, want) < TOLERANCE[dtype, m]


def test_bad_arguments_name_the_problem():
    x, w, b = inputs(7, 1, 2, 6, 6, 3, np.float32)
    U = winograd_filters(w)
    with pytest.raises(ValueError, match="m must be 2 or 4"):
        winograd_filters(w, 3)
    with pytest.raises(ValueError, match="3x3 filters"):
        winograd_filters(np.zeros((3, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"U must be winograd_filters\(w, m=4\)"):
        winograd_conv2d_forward(x, U, b, 1, m=4)
    with pytest.raises(ValueError, match="U must be"):
        winograd_conv2d_forward(x[:, :1], U, b, 1)
    with pytest.raises(ValueError, match="one bias per filter"):
        winograd_conv2d_forward(x, U, b[:2], 1)
    with pytest.raises(ValueError, match="pad must be 0, 1 or 2"):
        winograd_conv2d_forward(x, U, b, 3)
    with pytest.raises(ValueError, match="pad must be 0, 1 or 2"):
        winograd_conv2d_forward(x, U, b, True)
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        winograd_conv2d_forward(x[:, :, :2, :2], U, b, 0)
    with pytest.raises(TypeError, match="dtype"):
        winograd_conv2d_forward(x.astype(np.float64), U, b, 1)
    with pytest.raises(ValueError, match="4-D"):
        winograd_conv2d_forward(x[0], U, b, 1)
    with pytest.raises(ValueError, match="filters"):
        winograd_conv2d_input_grad(np.zeros((1, 2, 6, 6), np.float32), w, 1)
    with pytest.raises(ValueError, match="pool=True needs m=2"):
        winograd_conv2d_forward(x, winograd_filters(w, 4), b, 1, m=4, pool=True)
    with pytest.raises(ValueError, match="pool=True needs m=2"):
        winograd_conv2d_forward(x[:, :, :3, :3], U, b, 0, pool=True)
