"""max / average pooling: Cython vs NumPy vs naive loops, numerical gradients,
threads, overlapping windows, the tie rule and tampered caches."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from cnn.backends import get_backend
from tests.helpers import assert_close, check_gradients, compare_backends

BACKENDS = ("naive", "python", "cython")
OPS = ("maxpool2d", "avgpool2d")


def distinct(rng, shape, dtype=np.float64):
    """Values 0.1 apart in random order: max pool's argmax cannot flip under a
    finite-difference step, and no window holds a tie."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1).reshape(shape).astype(dtype)


def pool_input(rng, shape, dtype, ties):
    if ties:  # few distinct values: most windows hold tied maxima
        return rng.integers(-2, 3, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def out_size(size, k, s):
    return (size - k) // s + 1


@settings(max_examples=30, deadline=None)
@given(op=st.sampled_from(OPS), N=st.integers(1, 3), C=st.integers(1, 3),
       H=st.integers(1, 9), W=st.integers(1, 9), KH=st.integers(1, 3), KW=st.integers(1, 3),
       stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
       dtype=st.sampled_from([np.float32, np.float64]), ties=st.booleans(),
       seed=st.integers(0, 2**16))
def test_backends_agree_on_random_shapes(op, N, C, H, W, KH, KW, stride, dtype, ties, seed):
    assume(KH <= H and KW <= W)
    x = pool_input(np.random.default_rng(seed), (N, C, H, W), dtype, ties)
    out, (dx,) = compare_backends(op, (x,), dict(kernel=(KH, KW), stride=stride),
                                  backends=BACKENDS, seed=seed, grad_names=("dx",))
    sh, sw = stride or (KH, KW)
    assert out.shape == (N, C, out_size(H, KH, sh), out_size(W, KW, sw))
    assert out.dtype == dtype and dx.shape == x.shape and dx.dtype == dtype


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 4), H=st.integers(1, 12), W=st.integers(1, 12),
       KH=st.integers(1, 3), KW=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), ties=st.booleans(),
       seed=st.integers(0, 2**16))
def test_maxpool_argmax_and_values_agree_exactly(N, C, H, W, KH, KW, sh, sw, dtype, ties, seed):
    """Same element chosen in every window (ties included), so the outputs and
    the routed gradients are bit for bit the same on all three backends."""
    assume(KH <= H and KW <= W)
    rng = np.random.default_rng(seed)
    x = pool_input(rng, (N, C, H, W), dtype, ties)
    results = []
    for name in BACKENDS:
        out, cache = get_backend(name).maxpool2d_forward(x, (KH, KW), (sh, sw))
        argmax = cache[3]
        dout = np.arange(1, out.size + 1, dtype=dtype).reshape(out.shape)  # exact sums
        dx = get_backend(name).maxpool2d_backward(dout, cache)
        results.append((name, out, argmax, dx))
    _, out0, arg0, dx0 = results[0]
    assert arg0.dtype == np.int64 and arg0.shape == out0.shape
    # the argmax points at the output's value, inside the window
    plane = x.reshape(N * C, H * W)
    np.testing.assert_array_equal(
        np.take_along_axis(plane, arg0.reshape(N * C, -1), axis=1).reshape(out0.shape), out0)
    rows, cols = np.divmod(arg0, W)
    i = np.arange(out0.shape[2])[:, None]
    j = np.arange(out0.shape[3])[None, :]
    assert np.all((rows >= i * sh) & (rows < i * sh + KH))
    assert np.all((cols >= j * sw) & (cols < j * sw + KW))
    for name, out, argmax, dx in results[1:]:
        np.testing.assert_array_equal(out, out0, err_msg=f"out {name}")
        np.testing.assert_array_equal(argmax, arg0, err_msg=f"argmax {name}")
        np.testing.assert_array_equal(dx, dx0, err_msg=f"dx {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (3, 1), ((2, 3), (1, 2))])
@pytest.mark.parametrize("op", OPS)
def test_cython_matches_numpy_on_a_network_sized_layer(op, kernel, stride, dtype):
    x = np.random.default_rng(1).standard_normal((8, 16, 28, 27)).astype(dtype)
    compare_backends(op, (x,), dict(kernel=kernel, stride=stride), grad_names=("dx",))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,stride", [(2, None), (2, 1), (3, 2), ((3, 2), (1, 3)),
                                           ((1, 2), (2, 1)), (2, 3)])
@pytest.mark.parametrize("op", OPS)
def test_gradients_match_central_differences(op, backend, kernel, stride):
    ops = get_backend(backend)
    x = distinct(np.random.default_rng(2), (2, 2, 7, 6))
    check_gradients(lambda x: getattr(ops, f"{op}_forward")(x, kernel, stride),
                    getattr(ops, f"{op}_backward"), [x], wrt=(0,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 1), ((2, 3), (3, 2))])
@pytest.mark.parametrize("op", OPS)
def test_thread_counts_give_the_same_result(op, kernel, stride, dtype):
    # Large enough that the kernels really split the planes over 4 threads.
    ops = get_backend("cython")
    x = np.random.default_rng(3).standard_normal((4, 9, 45, 47)).astype(dtype)
    results = []
    for threads in (1, 2, 4):
        out, cache = getattr(ops, f"{op}_forward")(x, kernel, stride, threads=threads)
        dout = np.random.default_rng(4).standard_normal(out.shape).astype(dtype)
        dx = getattr(ops, f"{op}_backward")(dout, cache, threads=threads)
        results.append((out, dx))
    for out, dx in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


# Overlapping 2x2 windows, stride 1, worked by hand:
#   x = 5 1 2     windows: (0,0) 5 1 / 0 3 -> 5 at (0,0)   (0,1) 1 2 / 3 8 -> 8 at (1,2)
#       0 3 8              (1,0) 0 3 / 4 7 -> 7 at (2,1)   (1,1) 3 8 / 7 6 -> 8 at (1,2)
#       4 7 6
# dout = 1 2 / 3 4: (1,2) is the max of two windows and collects 2 + 4.
OVERLAP_X = [[5, 1, 2], [0, 3, 8], [4, 7, 6]]
OVERLAP_DOUT = [[1, 2], [3, 4]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_overlapping_windows_accumulate(backend, dtype):
    ops = get_backend(backend)
    out, cache = ops.maxpool2d_forward(np.array([[OVERLAP_X]], dtype), 2, 1)
    np.testing.assert_array_equal(out, np.array([[[[5, 8], [7, 8]]]], dtype))
    np.testing.assert_array_equal(cache[3], [[[[0, 5], [7, 5]]]])
    dx = ops.maxpool2d_backward(np.array([[OVERLAP_DOUT]], dtype), cache)
    np.testing.assert_array_equal(dx, np.array([[[[1, 0, 0], [0, 0, 6], [0, 3, 0]]]], dtype))
    assert dx.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transpose", [False, True], ids=["5x4", "4x5"])
def test_avgpool_2x2_on_odd_sizes_by_hand(backend, dtype, transpose, nan_outputs):
    """2x2 stride-2 windows on an odd height or width: the last row or column is in
    no window, so it pools nothing and gets a zero gradient (set, not left as is)."""
    x = np.arange(20, dtype=dtype).reshape(1, 1, 5, 4)
    want = np.array([[2.5, 4.5], [10.5, 12.5]], dtype)
    if transpose:
        x, want = x.transpose(0, 1, 3, 2).copy(), want.T
    ops = get_backend(backend)
    out, cache = ops.avgpool2d_forward(x, 2)
    np.testing.assert_array_equal(out[0, 0], want)
    dx = ops.avgpool2d_backward(np.full_like(out, 4), cache)
    expected = np.zeros_like(x)
    expected[..., :4, :4] = 1
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_avgpool_overlapping_windows_accumulate(backend, dtype):
    ops = get_backend(backend)
    out, cache = ops.avgpool2d_forward(np.array([[OVERLAP_X]], dtype), 2, 1)
    np.testing.assert_array_equal(out, np.array([[[[2.25, 3.5], [3.5, 6]]]], dtype))
    # each window spreads dout / 4 = 1, 2, 3, 4 over its four elements
    dx = ops.avgpool2d_backward(np.array([[OVERLAP_DOUT]], dtype) * 4, cache)
    np.testing.assert_array_equal(dx, np.array([[[[1, 3, 2], [4, 10, 6], [3, 7, 4]]]], dtype))


# A constant 4x4 plane: every element of every window ties, so each window's
# argmax is its last element in row-major order, the bottom-right corner
# (i*sh + KH-1) * 4 + (j*sw + KW-1).
@pytest.mark.parametrize("kernel,stride,expected", [
    (2, None, [[5, 7], [13, 15]]),       # the 2x2 stride-2 fast path
    (2, 1, [[5, 6, 7], [9, 10, 11], [13, 14, 15]]),
    (3, 1, [[10, 11], [14, 15]]),
    ((1, 3), (2, 1), [[2, 3], [10, 11]]),
    ((2, 3), (1, 2), [[6], [10], [14]]),   # strided offset-major path
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_ties_go_to_the_last_max_in_the_window(backend, dtype, kernel, stride,
                                                        expected):
    ops = get_backend(backend)
    out, cache = ops.maxpool2d_forward(np.full((1, 1, 4, 4), 3.0, dtype), kernel, stride)
    np.testing.assert_array_equal(cache[3][0, 0], expected)
    np.testing.assert_array_equal(out, 3.0)


# Tied maxima worked by hand, 2x2 stride 2 (the unrolled path):
#   x = 1 7 | 5 5     window 0: 1 7 / 7 0 -> 7 at (0,1) and (1,0): last is (1,0) = 4
#       7 0 | 5 2     window 1: 5 5 / 5 2 -> 5 at (0,2), (0,3), (1,2): last is (1,2) = 6
# and 3x3 stride 1 (the offset-major sw == 1 path) on
#   y = 2 9 1 9       window (0,0): 2 9 1 / 4 9 0 / 9 3 3 -> 9 at 1, 5, 8: last is 8
#       4 9 0 9       window (0,1): 9 1 9 / 9 0 9 / 3 3 3 -> 9 at 1, 3, 5, 7: last is 7
#       9 3 3 3
TIE_X = [[1, 7, 5, 5], [7, 0, 5, 2]]
TIE_Y = [[2, 9, 1, 9], [4, 9, 0, 9], [9, 3, 3, 3]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_tied_maxima_by_hand(backend, dtype):
    ops = get_backend(backend)
    out, cache = ops.maxpool2d_forward(np.array([[TIE_X]], dtype), 2)
    np.testing.assert_array_equal(out[0, 0], [[7, 5]])
    np.testing.assert_array_equal(cache[3][0, 0], [[4, 6]])
    dx = ops.maxpool2d_backward(np.array([[[[10, 20]]]], dtype), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [10, 0, 20, 0]])
    out, cache = ops.maxpool2d_forward(np.array([[TIE_Y]], dtype), 3, 1)
    np.testing.assert_array_equal(out[0, 0], [[9, 9]])
    np.testing.assert_array_equal(cache[3][0, 0], [[8, 7]])
    # the strided offset-major path (sw == 2), 3x2 windows over columns 0-1 and 2-3:
    # 2 9 / 4 9 / 9 3 -> 9 at 1, 5, 8: last is 8;  1 9 / 0 9 / 3 3 -> 9 at 3, 7: last is 7
    out, cache = ops.maxpool2d_forward(np.array([[TIE_Y]], dtype), (3, 2), (1, 2))
    np.testing.assert_array_equal(out[0, 0], [[9, 9]])
    np.testing.assert_array_equal(cache[3][0, 0], [[8, 7]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_signed_zero_tie_takes_the_last(backend, dtype):
    """0.0 == -0.0: a tie, so the later zero is chosen and is the value returned."""
    ops = get_backend(backend)
    x = np.array([[[[0.0, -0.0], [-1.0, -2.0]]]], dtype)
    out, cache = ops.maxpool2d_forward(x, 2)
    assert cache[3][0, 0, 0, 0] == 1
    assert out[0, 0, 0, 0] == 0 and np.signbit(out[0, 0, 0, 0])


# NaN windows worked by hand, 2x2 stride 2 (N is a NaN, flat indices in the plane):
#   1 N | N 8 | 5 N       window 0: N at 1, then 7 and 9 (no number beats a NaN) -> 1
#   7 9 | 3 N | N 2       window 1: N at 2 and 9: the last NaN wins             -> 9
#                         window 2: N at 5 and 10, then 2                       -> 10
NAN_X = [[1, np.nan, np.nan, 8, 5, np.nan], [7, 9, 3, np.nan, np.nan, 2]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_nan_by_hand(backend, dtype):
    """A NaN is above every number, a number after a NaN does not displace it, and
    of several NaNs the last one wins."""
    ops = get_backend(backend)
    x = np.array([[NAN_X]], dtype)
    out, cache = ops.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(cache[3][0, 0], [[1, 9, 10]])
    assert np.isnan(out).all()
    # a NaN first in the window, larger numbers after it: the NaN stays
    x = np.array([[[[np.nan, 5], [9, 7]]]], dtype)
    out, cache = ops.maxpool2d_forward(x, 2)
    assert cache[3][0, 0, 0, 0] == 0 and np.isnan(out[0, 0, 0, 0])
    # overlapping windows (offset-major path), NaN in the middle of the plane
    x = np.array([[[[1, 2, 3], [4, np.nan, 6], [7, 8, np.nan]]]], dtype)
    out, cache = ops.maxpool2d_forward(x, 2, 1)
    np.testing.assert_array_equal(cache[3][0, 0], [[4, 4], [4, 8]])
    dx = ops.maxpool2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0], [0, 3, 0], [0, 0, 1]])


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 1), (2, 3), ((2, 3), (1, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_nan_wins_and_backends_agree(dtype, kernel, stride):
    """A NaN is the max of its window (the last NaN when there are several);
    planes without NaN are unaffected."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    x[0, 1, 1, 1] = x[0, 1, 1, 2] = x[0, 1, 2, 1] = np.nan
    x[1, 2, 6, 7] = np.nan
    results = []
    for name in BACKENDS:
        ops = get_backend(name)
        out, cache = ops.maxpool2d_forward(x, kernel, stride)
        dx = ops.maxpool2d_backward(np.ones_like(out), cache)
        results.append((out, cache[3], dx))
    out0, arg0, dx0 = results[0]
    assert np.isnan(out0).any()
    for out, arg, dx in results[1:]:
        np.testing.assert_array_equal(out, out0)            # NaN == NaN here
        np.testing.assert_array_equal(arg, arg0)
        np.testing.assert_array_equal(dx, dx0)
    clean = np.ones(x.shape[:2], bool)
    clean[0, 1] = clean[1, 2] = False
    ref, _ = get_backend("python").maxpool2d_forward(np.nan_to_num(x), kernel, stride)
    np.testing.assert_array_equal(out0[clean], ref[clean])


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 8), W=st.integers(1, 8),
       KH=st.integers(1, 3), KW=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_maxpool_nans_and_ties_agree_exactly(N, C, H, W, KH, KW, sh, sw, dtype, seed):
    """Few distinct values, many NaNs and signed zeros: all backends choose the
    same element, the last max of its window (a NaN above all)."""
    assume(KH <= H and KW <= W)
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([np.nan, -0.0, 0.0, 1.0, -1.0], dtype),
                   size=(N, C, H, W), p=[0.2, 0.2, 0.2, 0.2, 0.2])
    args = []
    for name in BACKENDS:
        out, cache = get_backend(name).maxpool2d_forward(x, (KH, KW), (sh, sw))
        args.append(cache[3])
        np.testing.assert_array_equal(
            np.take_along_axis(x.reshape(N * C, -1), cache[3].reshape(N * C, -1), axis=1),
            out.reshape(N * C, -1))
    for a in args[1:]:
        np.testing.assert_array_equal(a, args[0])
    # the rule itself, window by window
    _, _, Hout, Wout = args[0].shape
    for n in range(N):
        for c in range(C):
            for i in range(Hout):
                for j in range(Wout):
                    win = x[n, c, i * sh:i * sh + KH, j * sw:j * sw + KW].ravel()
                    nan = np.flatnonzero(np.isnan(win))
                    k = nan[-1] if nan.size else np.flatnonzero(win == win.max())[-1]
                    kh, kw = divmod(int(k), KW)
                    assert args[0][n, c, i, j] == (i * sh + kh) * W + j * sw + kw


@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_backward_skips_argmax_outside_the_plane(backend):
    """A tampered cache cannot make backward write out of bounds."""
    ops = get_backend(backend)
    x = distinct(np.random.default_rng(6), (2, 3, 4, 6))
    out, cache = ops.maxpool2d_forward(x, 2)
    dout = np.random.default_rng(7).standard_normal(out.shape)
    expected = ops.maxpool2d_backward(dout, cache)
    argmax = cache[3].copy()
    bad = [(0, 0, 0, 0, -1), (0, 1, 1, 2, 24), (1, 2, 0, 1, 2**62), (1, 0, 1, 1, -2**63)]
    for n, c, i, j, value in bad:
        expected[n, c].flat[cache[3][n, c, i, j]] -= dout[n, c, i, j]
        argmax[n, c, i, j] = value
    tampered = cache[:3] + (argmax,)
    assert_close(ops.maxpool2d_backward(dout, tampered), expected, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_backward_rechecks_the_cache(backend):
    ops = get_backend(backend)
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 6))
    out, (cx, kernel, stride, argmax) = ops.maxpool2d_forward(x, 2)
    dout = np.ones_like(out)
    with pytest.raises(TypeError, match="argmax must be int64"):
        ops.maxpool2d_backward(dout, (cx, kernel, stride, argmax.astype(np.int32)))
    with pytest.raises(ValueError, match="argmax must have the pooled output's shape"):
        ops.maxpool2d_backward(dout, (cx, kernel, stride, argmax[:, :, :1]))
    with pytest.raises(TypeError, match="argmax must be a numpy array"):
        ops.maxpool2d_backward(dout, (cx, kernel, stride, argmax.tolist()))
    with pytest.raises(ValueError, match="dout must have the forward output's shape"):
        ops.maxpool2d_backward(dout, (cx[:, :, :2], kernel, stride, argmax))
    with pytest.raises(ValueError, match="larger than the input"):
        ops.maxpool2d_backward(dout, (cx, (5, 2), stride, argmax))
    # a non-contiguous argmax of the right shape is fine
    wide = np.zeros(argmax.shape[:-1] + (2 * argmax.shape[-1],), np.int64)
    wide[..., ::2] = argmax
    np.testing.assert_array_equal(ops.maxpool2d_backward(dout, (cx, kernel, stride,
                                                                wide[..., ::2])),
                                  ops.maxpool2d_backward(dout, (cx, kernel, stride, argmax)))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_stride_none_means_kernel_and_window_covering_the_input(backend, op):
    ops = get_backend(backend)
    x = np.random.default_rng(9).standard_normal((2, 3, 7, 5)).astype(np.float32)
    a, _ = getattr(ops, f"{op}_forward")(x, (3, 2))
    b, _ = getattr(ops, f"{op}_forward")(x, (3, 2), (3, 2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 3, 2, 2)
    whole, _ = getattr(ops, f"{op}_forward")(x, (7, 5))     # global pooling
    reduce = np.max if op == "maxpool2d" else np.mean
    assert_close(whole[:, :, 0, 0], reduce(x, axis=(2, 3)), np.float32)
