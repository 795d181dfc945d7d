"""The worked numbers of the Dahl layer diagrams (shared/reference/dahl-layer-diagrams.md)
as fixtures, run on every backend in float32 and float64.

Every value in these examples is a small integer, so every partial sum is exact
in float32 too: the results are compared exactly, whatever the summation order.

Where a diagram contradicts its own formula (an arithmetic slip in the
document), the fixture holds what the formula gives and a comment names the slip.
"""
import numpy as np
import pytest

from cnn.backends import BACKENDS, get_backend


@pytest.fixture(params=BACKENDS)
def backend(request):
    return get_backend(request.param)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


def arr(values, dtype):
    return np.array(values, dtype=dtype)


def assert_exact(actual, expected, dtype, name):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == dtype, f"{name}: dtype {actual.dtype} != {dtype}"
    np.testing.assert_array_equal(actual, expected.astype(dtype), err_msg=name)


# --------------------------------------------------------------------------------------
# Forward convolution
# --------------------------------------------------------------------------------------

# The 3-channel 4x4 input sample (RED, BLUE, GREEN), shape (C, H, W).
SAMPLE = [
    [[2, 2, 2, 2],
     [2, 0, 0, 2],
     [2, 0, 0, 2],
     [2, 2, 2, 2]],
    [[3, 0, 0, 3],
     [0, 3, 3, 0],
     [0, 3, 3, 0],
     [3, 0, 0, 3]],
    [[4, 0, 4, 4],
     [0, 4, 0, 4],
     [4, 0, 4, 0],
     [4, 4, 0, 4]],
]

# The first filter, one 3x3 kernel per input channel, shape (C, KH, KW).
FILTER0 = [
    [[1, 0, 1],
     [0, 1, 0],
     [1, 0, 1]],
    [[0, 1, 0],
     [1, 0, 1],
     [0, 1, 0]],
    [[1, 1, 1],
     [1, 0, 0],
     [1, 0, 0]],
]

# The second filter of "Single sample + multiple feature maps".
FILTER1 = [
    [[2, 0, 2],
     [0, 2, 0],
     [2, 0, 2]],
    [[0, 2, 0],
     [2, 0, 2],
     [0, 2, 0]],
    [[2, 2, 2],
     [2, 0, 0],
     [2, 0, 0]],
]

CONV_BIASES = [-1, 1]  # "Batch version": one bias per filter


def test_conv_forward_window_sums(backend, dtype):
    """Output (0, 0) of the diagram: RED 2+2+2 = 6, BLUE 3+3 = 6, GREEN 4+4+4 = 12."""
    x = arr([SAMPLE], dtype)
    w = arr([FILTER0], dtype)
    for c, expected in enumerate([6, 6, 12]):
        out, _ = backend.conv2d_forward(x[:, c:c + 1].copy(), w[:, c:c + 1].copy(),
                                        arr([0], dtype))
        assert out[0, 0, 0, 0] == expected, f"channel {c} of output (0, 0)"


def test_conv_forward_single_sample_one_filter(backend, dtype):
    x = arr([SAMPLE], dtype)                          # (1, 3, 4, 4)
    w = arr([FILTER0], dtype)                         # (1, 3, 3, 3)
    out, _ = backend.conv2d_forward(x, w, arr([0], dtype))
    assert_exact(out, [[[[24, 24],
                         [24, 24]]]], dtype, "conv forward, one filter")


def test_conv_forward_single_sample_scalar_bias(backend, dtype):
    """One feature map: the bias is one scalar added to every output value."""
    x = arr([SAMPLE], dtype)
    w = arr([FILTER0], dtype)
    out, _ = backend.conv2d_forward(x, w, arr([-1], dtype))
    assert_exact(out, np.full((1, 1, 2, 2), 23), dtype, "conv forward, scalar bias")


def test_conv_forward_single_sample_two_filters(backend, dtype):
    x = arr([SAMPLE], dtype)
    w = arr([FILTER0, FILTER1], dtype)                # (2, 3, 3, 3)
    out, _ = backend.conv2d_forward(x, w, arr([0, 0], dtype))
    assert_exact(out, [[[[24, 24], [24, 24]],
                        [[48, 48], [48, 48]]]], dtype, "conv forward, two filters")


def test_conv_forward_batch(backend, dtype):
    x = arr([SAMPLE, SAMPLE], dtype)                  # (2, 3, 4, 4)
    w = arr([FILTER0, FILTER1], dtype)
    # before the biases: 24s and 48s for every sample
    out, _ = backend.conv2d_forward(x, w, arr([0, 0], dtype))
    assert_exact(out, [[[[24, 24], [24, 24]], [[48, 48], [48, 48]]],
                       [[[24, 24], [24, 24]], [[48, 48], [48, 48]]]], dtype,
                 "conv forward batch, no bias")
    # biases (-1, 1): one per filter, added for every sample
    out, _ = backend.conv2d_forward(x, w, arr(CONV_BIASES, dtype))
    assert_exact(out, [[[[23, 23], [23, 23]], [[49, 49], [49, 49]]],
                       [[[23, 23], [23, 23]], [[49, 49], [49, 49]]]], dtype,
                 "conv forward batch, biases (-1, 1)")


# --------------------------------------------------------------------------------------
# Forward relu
# --------------------------------------------------------------------------------------

RELU_IN = [
    [[[-1, 2], [-9, 5]], [[-5, -5], [-2, -3]]],
    [[[9, -2], [0, 0]], [[0, 4], [-3, 7]]],
]
RELU_OUT = [
    [[[0, 2], [0, 5]], [[0, 0], [0, 0]]],
    [[[9, 0], [0, 0]], [[0, 4], [0, 7]]],
]


def test_relu_forward(backend, dtype):
    out, _ = backend.relu_forward(arr(RELU_IN, dtype))
    assert_exact(out, RELU_OUT, dtype, "relu forward")


# --------------------------------------------------------------------------------------
# Forward max pooling (2x2 windows, stride 2)
# --------------------------------------------------------------------------------------

POOL_SINGLE_IN = [[6, 2, 8, 5],
                  [7, 1, 7, 5],
                  [1, 2, 1, 8],
                  [8, 2, 7, 9]]
POOL_SINGLE_OUT = [[7, 8],
                   [8, 9]]
POOL_SINGLE_MASK = [[0, 0, 1, 0],
                    [1, 0, 0, 0],
                    [0, 0, 0, 0],
                    [1, 0, 0, 1]]

# "Batch version + multiple feature maps": (N=2, C=2, 4, 4).
POOL_BATCH_IN = [
    [POOL_SINGLE_IN,
     [[2, 8, 7, 6],
      [6, 8, 5, 0],
      [2, 7, 7, 8],
      [3, 7, 6, 8]]],
    [[[5, 9, 0, 5],
      [9, 0, 0, 2],
      [7, 7, 6, 2],
      [5, 7, 9, 5]],
     [[9, 9, 5, 3],
      [8, 3, 3, 9],
      [8, 4, 4, 8],
      [4, 7, 5, 8]]],
]
POOL_BATCH_OUT = [
    [[[7, 8], [8, 9]], [[8, 7], [7, 8]]],
    [[[9, 5], [7, 9]], [[9, 9], [8, 8]]],
]
# "when we have multiple max values that are equal we take the index of the last
# one in the window" (row-major order: sample 1, map 0, window (0, 0) holds 9 at
# (0, 1) and (1, 0); the mask marks (1, 0)).
POOL_BATCH_MASK = [
    [[[0, 0, 1, 0],
      [1, 0, 0, 0],
      [0, 0, 0, 0],
      [1, 0, 0, 1]],
     [[0, 0, 1, 0],
      [0, 1, 0, 0],
      [0, 0, 0, 0],
      [0, 1, 0, 1]]],
    [[[0, 0, 0, 1],
      [1, 0, 0, 0],
      [0, 0, 0, 0],
      [0, 1, 1, 0]],
     [[0, 1, 0, 0],
      [0, 0, 0, 1],
      [1, 0, 0, 0],
      [0, 0, 0, 1]]],
]


def test_maxpool_forward_single(backend, dtype):
    out, _ = backend.maxpool2d_forward(arr([[POOL_SINGLE_IN]], dtype), 2, 2)
    assert_exact(out, [[POOL_SINGLE_OUT]], dtype, "maxpool forward")


def test_maxpool_mask_single(backend, dtype):
    """A dout of ones routes to exactly the positions of the mask (no ties here)."""
    out, cache = backend.maxpool2d_forward(arr([[POOL_SINGLE_IN]], dtype), 2, 2)
    dx = backend.maxpool2d_backward(np.ones_like(out), cache)
    assert_exact(dx, [[POOL_SINGLE_MASK]], dtype, "maxpool mask")


def test_maxpool_forward_batch(backend, dtype):
    out, _ = backend.maxpool2d_forward(arr(POOL_BATCH_IN, dtype), 2)  # stride None = kernel
    assert_exact(out, POOL_BATCH_OUT, dtype, "maxpool forward, batch")


def test_maxpool_mask_batch_ties_take_last_in_window(backend, dtype):
    """The batch masks of the diagram; four windows hold tied maxima, and the
    document marks the last one of the window (row-major)."""
    out, cache = backend.maxpool2d_forward(arr(POOL_BATCH_IN, dtype), 2, 2)
    dx = backend.maxpool2d_backward(np.ones_like(out), cache)
    assert_exact(dx, POOL_BATCH_MASK, dtype, "maxpool masks, batch")


def test_maxpool_backward_batch_untied_windows(backend, dtype):
    """The windows of the batch whose maximum is unique route as the document
    draws, whatever the tie rule (the tied ones are checked just above)."""
    x = np.array(POOL_BATCH_IN)
    windows = x.reshape(2, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)   # (n, c, i, j, kh, kw)
    unique = (windows == windows.max(axis=(4, 5), keepdims=True)).sum(axis=(4, 5)) == 1
    assert unique.sum() == 9                      # 7 of the 16 windows hold a tie
    keep = np.repeat(np.repeat(unique, 2, axis=2), 2, axis=3)           # back to (n, c, 4, 4)
    out, cache = backend.maxpool2d_forward(arr(POOL_BATCH_IN, dtype), 2, 2)
    dx = backend.maxpool2d_backward(arr(POOL_DOUT, dtype), cache)
    assert_exact(dx[keep], np.array(POOL_DX)[keep], dtype, "maxpool backward, untied windows")
    dx = backend.maxpool2d_backward(np.ones_like(out), cache)
    assert_exact(dx[keep], np.array(POOL_BATCH_MASK)[keep], dtype, "maxpool mask, untied")


# --------------------------------------------------------------------------------------
# Forward flatten (a reshape, no kernel) and forward dense
# --------------------------------------------------------------------------------------

FLAT = [[7, 8, 8, 9, 8, 7, 7, 8],
        [9, 5, 7, 9, 9, 9, 8, 8]]

DENSE_W = [[1, 2, 3, 2, 1, 2, 3, 2],     # (M, D) = (3 classes, 8 inputs)
           [2, 1, 2, 3, 2, 1, 2, 3],
           [3, 2, 1, 2, 3, 2, 1, 2]]
DENSE_B = [-1, 1, 2]
# Batch product before the biases: [[124, 126, 124], [125, 131, 131]].
# Slip in the document: the single-sample "add biases" step writes the product as
# [124, 126, 122]; the product drawn just above it (and the batch version) is
# [124, 126, 124], and its own sum 122 + 2 = 126 only holds for 124.
DENSE_OUT = [[123, 127, 126],
             [124, 132, 133]]


def test_flatten_is_c_order_reshape():
    """Flatten over the batch: each sample's maps (C, H, W) laid out in C order."""
    pooled = np.array(POOL_BATCH_OUT)
    np.testing.assert_array_equal(pooled.reshape(pooled.shape[0], -1), FLAT)
    # backward flatten (unflatten) is the reverse reshape
    np.testing.assert_array_equal(np.array(FLAT).reshape(pooled.shape), pooled)


def test_dense_forward_single_sample(backend, dtype):
    x = arr(FLAT[:1], dtype)
    w = arr(DENSE_W, dtype)
    out, _ = backend.dense_forward(x, w, arr([0, 0, 0], dtype))
    assert_exact(out, [[124, 126, 124]], dtype, "dense forward, no bias")
    out, _ = backend.dense_forward(x, w, arr(DENSE_B, dtype))
    assert_exact(out, DENSE_OUT[:1], dtype, "dense forward, single sample")


def test_dense_forward_batch(backend, dtype):
    x = arr(FLAT, dtype)
    w = arr(DENSE_W, dtype)
    out, _ = backend.dense_forward(x, w, arr([0, 0, 0], dtype))
    assert_exact(out, [[124, 126, 124], [125, 131, 131]], dtype, "dense forward, no bias")
    out, _ = backend.dense_forward(x, w, arr(DENSE_B, dtype))
    assert_exact(out, DENSE_OUT, dtype, "dense forward, batch")


def test_pool_flatten_dense_chain(backend, dtype):
    """The forward chain of the document: max pool -> flatten -> dense."""
    pooled, _ = backend.maxpool2d_forward(arr(POOL_BATCH_IN, dtype), 2, 2)
    flat = pooled.reshape(pooled.shape[0], -1)
    assert_exact(flat, FLAT, dtype, "flatten")
    out, _ = backend.dense_forward(flat, arr(DENSE_W, dtype), arr(DENSE_B, dtype))
    assert_exact(out, DENSE_OUT, dtype, "dense forward after pooling")


# --------------------------------------------------------------------------------------
# Backward dense: the document feeds the predictions back as the gradients
# --------------------------------------------------------------------------------------

# dx row of a sample = its gradient row (vector) times the weights (matrix):
# [123, 127, 126] @ DENSE_W and [124, 132, 133] @ DENSE_W (drawn as "..." in the doc).
DENSE_DX = [[755, 625, 749, 879, 755, 625, 749, 879],
            [787, 646, 769, 910, 787, 646, 769, 910]]


def test_dense_backward_single_sample(backend, dtype):
    x = arr(FLAT[:1], dtype)
    out, cache = backend.dense_forward(x, arr(DENSE_W, dtype), arr(DENSE_B, dtype))
    dx, dw, db = backend.dense_backward(arr(DENSE_OUT[:1], dtype), cache)
    assert_exact(db, [123, 127, 126], dtype, "dense db, single sample")
    # dl_dw: outer product of the gradients (123, 127, 126) and the forward input
    assert_exact(dw, np.outer(DENSE_OUT[0], FLAT[0]), dtype, "dense dw, single sample")
    assert_exact(dw[:, 0], [123 * 7, 127 * 7, 126 * 7], dtype, "dense dw column 0")
    assert_exact(dx, DENSE_DX[:1], dtype, "dense dx, single sample")


def test_dense_backward_batch(backend, dtype):
    x = arr(FLAT, dtype)
    out, cache = backend.dense_forward(x, arr(DENSE_W, dtype), arr(DENSE_B, dtype))
    assert_exact(out, DENSE_OUT, dtype, "dense forward")
    dx, dw, db = backend.dense_backward(arr(DENSE_OUT, dtype), cache)
    # "we just have to sum each gradients over the batch dimension"
    assert_exact(db, [247, 259, 259], dtype, "dense db (column sums of the gradients)")
    # "for the batch version we do that for each pair of forward input and
    # gradients. The result is summed up in dl_dw"
    expected_dw = np.outer(DENSE_OUT[0], FLAT[0]) + np.outer(DENSE_OUT[1], FLAT[1])
    assert_exact(dw, expected_dw, dtype, "dense dw (summed outer products)")
    assert_exact(dw, [[1977, 1604, 1852, 2223, 2100, 1977, 1853, 1976],
                      [2077, 1676, 1940, 2331, 2204, 2077, 1945, 2072],
                      [2079, 1673, 1939, 2331, 2205, 2079, 1946, 2072]], dtype, "dense dw")
    assert_exact(dx, DENSE_DX, dtype, "dense dx (gradients @ weights)")


# --------------------------------------------------------------------------------------
# Backward max pooling: the forward input is the batch above, the gradients are
# new values "so we can see where the results gets propagated"
# --------------------------------------------------------------------------------------

POOL_DOUT = [
    [[[8, 2], [5, 1]], [[7, 5], [4, 7]]],
    [[[5, 1], [9, 6]], [[4, 4], [0, 3]]],
]
POOL_DX = [
    [[[0, 0, 2, 0],
      [8, 0, 0, 0],
      [0, 0, 0, 0],
      [5, 0, 0, 1]],
     [[0, 0, 5, 0],
      [0, 7, 0, 0],
      [0, 0, 0, 0],
      [0, 4, 0, 7]]],
    [[[0, 0, 0, 1],
      [5, 0, 0, 0],
      [0, 0, 0, 0],
      [0, 9, 6, 0]],
     [[0, 4, 0, 0],
      [0, 0, 0, 4],
      [0, 0, 0, 0],
      [0, 0, 0, 3]]],
]


def test_maxpool_backward(backend, dtype):
    out, cache = backend.maxpool2d_forward(arr(POOL_BATCH_IN, dtype), 2, 2)
    dx = backend.maxpool2d_backward(arr(POOL_DOUT, dtype), cache)
    assert_exact(dx, POOL_DX, dtype, "maxpool backward")


# --------------------------------------------------------------------------------------
# Backward relu: its upstream gradient is the max pool backward's output above
# --------------------------------------------------------------------------------------

RELU_BACKWARD_X = [   # "Relu forward input (example)"
    [[[-1, 5, 2, 3],
      [-7, 9, 4, 7],
      [6, -6, 4, 8],
      [-9, 5, 2, 2]],
     [[5, 8, 9, 9],
      [4, -1, 6, 4],
      [6, 0, 5, -4],
      [3, 7, 6, 9]]],
    [[[5, 8, 9, 9],
      [-3, 7, 3, 7],
      [0, 5, 0, 0],
      [3, 6, 3, 6]],
     [[5, 1, 7, -1],
      [1, -8, 6, 9],
      [7, 5, 4, 7],
      [4, -1, 9, 4]]],
]
RELU_BACKWARD_DX = [
    [[[0, 0, 2, 0],
      [0, 0, 0, 0],
      [0, 0, 0, 0],
      [0, 0, 0, 1]],
     [[0, 0, 5, 0],
      [0, 0, 0, 0],
      [0, 0, 0, 0],
      [0, 4, 0, 7]]],
    [[[0, 0, 0, 1],
      [0, 0, 0, 0],
      [0, 0, 0, 0],
      [0, 9, 6, 0]],
     [[0, 4, 0, 0],
      [0, 0, 0, 4],
      [0, 0, 0, 0],
      [0, 0, 0, 3]]],
]


def test_relu_backward(backend, dtype):
    _, cache = backend.relu_forward(arr(RELU_BACKWARD_X, dtype))
    dx = backend.relu_backward(arr(POOL_DX, dtype), cache)
    assert_exact(dx, RELU_BACKWARD_DX, dtype, "relu backward")


# --------------------------------------------------------------------------------------
# Backward convolution
# --------------------------------------------------------------------------------------

# dl_dout, (N=2, F=2, 2, 2).
CONV_DOUT = [
    [[[5, 0], [0, 1]], [[7, 0], [0, 0]]],
    [[[1, 0], [8, 0]], [[0, 1], [0, 6]]],
]

# "Computing the output" for sample 0, filter 0: the full convolution of the
# padded gradient [[5, 0], [0, 1]] with the rotated filter.
# Slip in the document: it draws channel 0 row 1 as [0, 6, 0, 0]. The gradient 1
# at output (1, 1) puts the filter's channel 0 row 0, [1, 0, 1], on input row 1,
# columns 1..3, so (1, 3) gets 1*1 = 1 (the 5 at (0, 0) adds nothing there): the
# formula gives [0, 6, 0, 1]. Channels 1 and 2 of the diagram agree with it.
CONV_DX_SAMPLE0_FILTER0 = [
    [[5, 0, 5, 0],
     [0, 6, 0, 1],
     [5, 0, 6, 0],
     [0, 1, 0, 1]],
    [[0, 5, 0, 0],
     [5, 0, 6, 0],
     [0, 6, 0, 1],
     [0, 0, 1, 0]],
    [[5, 5, 5, 0],
     [5, 1, 1, 1],
     [5, 1, 0, 0],
     [0, 1, 0, 0]],
]

# "Updating filters" for sample 0, filter 0: dl_df(kh, kw, c) = the input window at
# (kh, kw) times the gradient [[5, 0], [0, 1]]. The document draws row 0 of each
# channel (dl_df(0,0), (1,0), (2,0) in its x-first notation):
#   channel 0: 10, 10, 12; channel 1: 18, 3, 0; channel 2: 24, 24, 24.
# Slip in the document: channel 2 at (0, 1) is drawn as 24, but its window there
# is [[0, 4], [4, 0]] (GREEN rows 0-1, columns 1-2), so 0*5 + 0*1 = 0.
# Rows 1 and 2 are left to "etc." in the document; they follow from the same formula.
CONV_DW_SAMPLE0_FILTER0 = [
    [[10, 10, 12],
     [10, 0, 2],
     [12, 2, 2]],
    [[18, 3, 0],
     [3, 18, 15],
     [0, 15, 18]],
    [[24, 0, 24],
     [0, 24, 0],
     [24, 0, 24]],
]


def conv_backward_by_definition(x, w, dout):
    """dx, dw of a stride-1, pad-0 convolution, straight from the document's
    description: each gradient value times its filter, added back at its
    window (dx); each input window times its gradient value, summed (dw)."""
    x, w, dout = (np.asarray(a, dtype=np.int64) for a in (x, w, dout))
    N, F, Hout, Wout = dout.shape
    KH, KW = w.shape[2:]
    dx = np.zeros(x.shape, dtype=np.int64)
    dw = np.zeros(w.shape, dtype=np.int64)
    for n in range(N):
        for f in range(F):
            for i in range(Hout):
                for j in range(Wout):
                    dx[n, :, i:i + KH, j:j + KW] += dout[n, f, i, j] * w[f]
                    dw[f] += dout[n, f, i, j] * x[n, :, i:i + KH, j:j + KW]
    return dx, dw


def test_conv_backward_dx_sample0_filter0(backend, dtype):
    """Computing the output: sample 0, filter 0 of the diagram."""
    _, cache = backend.conv2d_forward(arr([SAMPLE], dtype), arr([FILTER0], dtype),
                                      arr([-1], dtype))
    dx, dw, db = backend.conv2d_backward(arr([CONV_DOUT[0][:1]], dtype), cache)
    assert_exact(dx, [CONV_DX_SAMPLE0_FILTER0], dtype, "conv dx, sample 0 filter 0")
    # the corner values of the first two steps of the diagram
    assert dx[0, 0, 0, 0] == 5 and dx[0, 1, 0, 0] == 0 and dx[0, 2, 0, 0] == 5
    assert dx[0, 0, 0, 1] == 0 and dx[0, 1, 0, 1] == 5 and dx[0, 2, 0, 1] == 5


def test_conv_backward_dw_sample0_filter0(backend, dtype):
    """Updating filters: sample 0, filter 0 of the diagram."""
    _, cache = backend.conv2d_forward(arr([SAMPLE], dtype), arr([FILTER0], dtype),
                                      arr([-1], dtype))
    dx, dw, db = backend.conv2d_backward(arr([CONV_DOUT[0][:1]], dtype), cache)
    # the row the document draws (with channel 2's slip corrected, see above)
    assert_exact(dw[0, :, 0, :], [[10, 10, 12], [18, 3, 0], [24, 0, 24]], dtype,
                 "conv dw row 0, sample 0 filter 0")
    # dl_df(0, 0, c): 2x5 = 10, 3x5 + 3x1 = 18, 4x5 + 4x1 = 24
    assert_exact(dw[0, :, 0, 0], [10, 18, 24], dtype, "conv dw (0, 0)")
    assert_exact(dw, [CONV_DW_SAMPLE0_FILTER0], dtype, "conv dw, sample 0 filter 0")
    assert_exact(db, [6], dtype, "conv db, sample 0 filter 0")


def test_conv_backward_batch(backend, dtype):
    """The whole batch: two samples, two filters, biases (-1, 1)."""
    x = [SAMPLE, SAMPLE]
    w = [FILTER0, FILTER1]
    out, cache = backend.conv2d_forward(arr(x, dtype), arr(w, dtype), arr(CONV_BIASES, dtype))
    dx, dw, db = backend.conv2d_backward(arr(CONV_DOUT, dtype), cache)
    # Updating biases: sum over x, y and the batch; per sample (6, 7) and (9, 7)
    assert_exact(db, [15, 14], dtype, "conv db")
    expected_dx, expected_dw = conv_backward_by_definition(x, w, CONV_DOUT)
    # "for each sample we accumulate the results obtained for each filters"
    assert_exact(dx, expected_dx, dtype, "conv dx, batch")
    assert_exact(dw, expected_dw, dtype, "conv dw, batch")
    # dx[0] = filter 0's part (the diagram) + the 7 at filter 1's (0, 0) times FILTER1
    assert_exact(dx[0], np.array(CONV_DX_SAMPLE0_FILTER0) + 7 * np.pad(
        np.array(FILTER1), ((0, 0), (0, 1), (0, 1))), dtype, "conv dx[0]")


def test_conv_backward_definition_matches_document():
    """The by-definition helper reproduces the diagram's (corrected) numbers."""
    dx, dw = conv_backward_by_definition([SAMPLE], [FILTER0], [CONV_DOUT[0][:1]])
    np.testing.assert_array_equal(dx[0], CONV_DX_SAMPLE0_FILTER0)
    np.testing.assert_array_equal(dw[0], CONV_DW_SAMPLE0_FILTER0)
