"""Bad inputs get a clear ValueError / TypeError naming the argument, on every
backend and for every op; odd but valid inputs (non-contiguous arrays, 1x1
everything, huge strides) work, and never crash the interpreter."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnn.backends import BACKENDS, get_backend

F32, F64 = np.float32, np.float64


def rand(*shape, dtype=F32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return get_backend(request.param)


# --------------------------------------------------------------------------------------
# Valid inputs of every op (float32), which the cases below spoil one at a time
# --------------------------------------------------------------------------------------

def conv_args(dtype=F32):
    return rand(2, 3, 5, 5, dtype=dtype), rand(4, 3, 3, 3, dtype=dtype, seed=1), \
        rand(4, dtype=dtype, seed=2)


def dense_args(dtype=F32):
    return rand(4, 5, dtype=dtype), rand(3, 5, dtype=dtype, seed=1), rand(3, dtype=dtype, seed=2)


def pool_x(dtype=F32):
    return rand(2, 3, 6, 6, dtype=dtype)


def bn_args(dtype=F32, C=3):
    return [rand(2, C, 4, 4, dtype=dtype), rand(C, dtype=dtype, seed=1) + 1,
            rand(C, dtype=dtype, seed=2), np.zeros(C, dtype=dtype), np.ones(C, dtype=dtype)]


LOGITS = rand(4, 5)
LABELS = np.array([0, 1, 4, 2])


def conv(B, x=None, w=None, b=None, **kw):
    dx, dw, db = conv_args()
    return B.conv2d_forward(dx if x is None else x, dw if w is None else w,
                            db if b is None else b, **kw)


def dense(B, x=None, w=None, b=None, **kw):
    dx, dw, db = dense_args()
    return B.dense_forward(dx if x is None else x, dw if w is None else w,
                           db if b is None else b, **kw)


def bn(B, **changes):
    x, gamma, beta, rm, rv = bn_args()
    args = dict(x=x, gamma=gamma, beta=beta, running_mean=rm, running_var=rv)
    kwargs = {k: changes.pop(k) for k in ("training", "momentum", "eps", "threads")
              if k in changes}
    args.update(changes)
    return B.batchnorm2d_forward(args["x"], args["gamma"], args["beta"],
                                 args["running_mean"], args["running_var"], **kwargs)


def softmax(B, logits=LOGITS, labels=LABELS, **kw):
    return B.softmax_cross_entropy(logits, labels, **kw)


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


# (id, call(backend), exception, regex the message must match)
FORWARD_CASES = [
    # ---- conv2d_forward -------------------------------------------------------------
    ("conv x 3-D", lambda B: conv(B, x=rand(3, 5, 5)), ValueError, r"x must be 4-D"),
    ("conv x 5-D", lambda B: conv(B, x=rand(1, 2, 3, 5, 5)), ValueError, r"x must be 4-D"),
    ("conv w 3-D", lambda B: conv(B, w=rand(3, 3, 3)), ValueError, r"w must be 4-D"),
    ("conv b 2-D", lambda B: conv(B, b=rand(4, 1)), ValueError, r"b must be 1-D"),
    ("conv b scalar", lambda B: conv(B, b=np.float32(1.0)), TypeError, r"b must be a numpy array"),
    ("conv channel mismatch", lambda B: conv(B, w=rand(4, 2, 3, 3)), ValueError,
     r"channel mismatch: x has 3 channels .* w expects 2"),
    ("conv channel mismatch w 4 channels", lambda B: conv(B, w=rand(4, 4, 3, 3)), ValueError,
     r"x has 3 channels .* w expects 4"),
    ("conv bias too short", lambda B: conv(B, b=rand(3)), ValueError,
     r"b must have one bias per filter.*w has 4 filters"),
    ("conv bias too long", lambda B: conv(B, b=rand(5)), ValueError,
     r"b must have one bias per filter"),
    ("conv kernel larger than input", lambda B: conv(B, w=rand(4, 3, 6, 6)), ValueError,
     r"kernel 6x6 .*w shape.* larger than the padded input 5x5"),
    ("conv kernel wider than input", lambda B: conv(B, w=rand(4, 3, 3, 6)), ValueError,
     r"kernel 3x6 .* larger than the padded input"),
    ("conv kernel larger than padded input", lambda B: conv(B, w=rand(4, 3, 8, 8), pad=1),
     ValueError, r"kernel 8x8 .* larger than the padded input 7x7"),
    ("conv kernel taller than h-padded input", lambda B: conv(B, w=rand(4, 3, 6, 3), pad=(0, 2)),
     ValueError, r"kernel 6x3 .* larger than the padded input 5x9"),
    ("conv stride 0", lambda B: conv(B, stride=0), ValueError, r"stride must be >= 1"),
    ("conv stride -1", lambda B: conv(B, stride=-1), ValueError, r"stride must be >= 1"),
    ("conv stride (1, 0)", lambda B: conv(B, stride=(1, 0)), ValueError, r"stride must be >= 1"),
    ("conv stride (-2, 1)", lambda B: conv(B, stride=(-2, 1)), ValueError,
     r"stride must be >= 1"),
    ("conv stride True", lambda B: conv(B, stride=True), TypeError,
     r"stride must be an int or a pair of ints"),
    ("conv stride 1.0", lambda B: conv(B, stride=1.0), TypeError,
     r"stride must be an int or a pair of ints"),
    ("conv stride 1.5", lambda B: conv(B, stride=1.5), TypeError, r"stride must be an int"),
    ("conv stride (1, 1.0)", lambda B: conv(B, stride=(1, 1.0)), TypeError,
     r"stride must be an int"),
    ("conv stride (True, 1)", lambda B: conv(B, stride=(True, 1)), TypeError,
     r"stride must be an int"),
    ("conv stride '1'", lambda B: conv(B, stride="1"), TypeError, r"stride must be an int"),
    ("conv stride None", lambda B: conv(B, stride=None), TypeError, r"stride must be an int"),
    ("conv stride 3-tuple", lambda B: conv(B, stride=(1, 1, 1)), ValueError,
     r"stride must be an int or a pair of ints"),
    ("conv stride 1-tuple", lambda B: conv(B, stride=(1,)), ValueError,
     r"stride must be an int or a pair of ints"),
    ("conv pad -1", lambda B: conv(B, pad=-1), ValueError, r"pad must be >= 0"),
    ("conv pad (0, -1)", lambda B: conv(B, pad=(0, -1)), ValueError, r"pad must be >= 0"),
    ("conv pad True", lambda B: conv(B, pad=True), TypeError, r"pad must be an int or a pair"),
    ("conv pad False", lambda B: conv(B, pad=False), TypeError, r"pad must be an int"),
    ("conv pad 1.0", lambda B: conv(B, pad=1.0), TypeError, r"pad must be an int"),
    ("conv pad 0.5", lambda B: conv(B, pad=0.5), TypeError, r"pad must be an int"),
    ("conv pad 3-tuple", lambda B: conv(B, pad=(0, 0, 0)), ValueError,
     r"pad must be an int or a pair of ints"),
    ("conv w float64 x float32", lambda B: conv(B, w=rand(4, 3, 3, 3, dtype=F64)), TypeError,
     r"w has dtype float64 but the other inputs are float32"),
    ("conv b float64 x float32", lambda B: conv(B, b=rand(4, dtype=F64)), TypeError,
     r"b has dtype float64 but the other inputs are float32"),
    ("conv x float64 w float32", lambda B: conv(B, x=rand(2, 3, 5, 5, dtype=F64)), TypeError,
     r"w has dtype float32 but the other inputs are float64"),
    ("conv x int", lambda B: conv(B, x=np.ones((2, 3, 5, 5), dtype=np.int64)), TypeError,
     r"x must be float32 or float64, got dtype int64"),
    ("conv x int32", lambda B: conv(B, x=np.ones((2, 3, 5, 5), dtype=np.int32)), TypeError,
     r"x must be float32 or float64"),
    ("conv x float16", lambda B: conv(B, x=np.ones((2, 3, 5, 5), dtype=np.float16)), TypeError,
     r"x must be float32 or float64, got dtype float16"),
    ("conv x bool", lambda B: conv(B, x=np.ones((2, 3, 5, 5), dtype=bool)), TypeError,
     r"x must be float32 or float64"),
    ("conv w int", lambda B: conv(B, w=np.ones((4, 3, 3, 3), dtype=np.int64)), TypeError,
     r"w must be float32 or float64"),
    ("conv b int", lambda B: conv(B, b=np.ones(4, dtype=np.int64)), TypeError,
     r"b must be float32 or float64"),
    ("conv x list", lambda B: conv(B, x=conv_args()[0].tolist()), TypeError,
     r"x must be a numpy array, got list"),
    ("conv w list", lambda B: conv(B, w=conv_args()[1].tolist()), TypeError,
     r"w must be a numpy array, got list"),
    ("conv b list", lambda B: conv(B, b=[0.0, 0.0, 0.0, 0.0]), TypeError,
     r"b must be a numpy array, got list"),
    ("conv x float", lambda B: conv(B, x=3.0), TypeError, r"x must be a numpy array, got float"),
    ("conv x empty batch", lambda B: conv(B, x=rand(0, 3, 5, 5)), ValueError,
     r"x must not be empty"),
    ("conv x no channels", lambda B: conv(B, x=rand(2, 0, 5, 5), w=rand(4, 0, 3, 3)), ValueError,
     r"x must not be empty"),
    ("conv w no filters", lambda B: conv(B, w=rand(0, 3, 3, 3), b=rand(0)), ValueError,
     r"w must not be empty"),
    ("conv w empty kernel", lambda B: conv(B, w=rand(4, 3, 0, 3)), ValueError,
     r"w must not be empty"),
    ("conv b empty", lambda B: conv(B, b=rand(0)), ValueError, r"b must not be empty"),
    # ---- maxpool2d_forward / avgpool2d_forward (each op below via both names) --------
    *[case
      for op in ("maxpool2d_forward", "avgpool2d_forward")
      for case in [
          (f"{op} x 3-D", lambda B, op=op: getattr(B, op)(rand(3, 6, 6)), ValueError,
           r"x must be 4-D"),
          (f"{op} x 2-D", lambda B, op=op: getattr(B, op)(rand(6, 6)), ValueError,
           r"x must be 4-D"),
          (f"{op} kernel larger than input", lambda B, op=op: getattr(B, op)(pool_x(), 7),
           ValueError, r"pooling kernel 7x7 is larger than the input 6x6"),
          (f"{op} kernel wider than input", lambda B, op=op: getattr(B, op)(pool_x(), (2, 7)),
           ValueError, r"pooling kernel 2x7 is larger than the input 6x6"),
          (f"{op} kernel 0", lambda B, op=op: getattr(B, op)(pool_x(), 0), ValueError,
           r"kernel must be >= 1"),
          (f"{op} kernel -2", lambda B, op=op: getattr(B, op)(pool_x(), -2), ValueError,
           r"kernel must be >= 1"),
          (f"{op} kernel (2, 0)", lambda B, op=op: getattr(B, op)(pool_x(), (2, 0)), ValueError,
           r"kernel must be >= 1"),
          (f"{op} kernel True", lambda B, op=op: getattr(B, op)(pool_x(), True), TypeError,
           r"kernel must be an int or a pair of ints"),
          (f"{op} kernel 2.0", lambda B, op=op: getattr(B, op)(pool_x(), 2.0), TypeError,
           r"kernel must be an int"),
          (f"{op} kernel 3-tuple", lambda B, op=op: getattr(B, op)(pool_x(), (2, 2, 2)),
           ValueError, r"kernel must be an int or a pair of ints"),
          (f"{op} stride 0", lambda B, op=op: getattr(B, op)(pool_x(), 2, 0), ValueError,
           r"stride must be >= 1"),
          (f"{op} stride -1", lambda B, op=op: getattr(B, op)(pool_x(), 2, -1), ValueError,
           r"stride must be >= 1"),
          (f"{op} stride (0, 2)", lambda B, op=op: getattr(B, op)(pool_x(), 2, (0, 2)),
           ValueError, r"stride must be >= 1"),
          (f"{op} stride True", lambda B, op=op: getattr(B, op)(pool_x(), 2, True), TypeError,
           r"stride must be an int or a pair of ints"),
          (f"{op} stride 2.0", lambda B, op=op: getattr(B, op)(pool_x(), 2, 2.0), TypeError,
           r"stride must be an int"),
          (f"{op} stride (2, 1.5)", lambda B, op=op: getattr(B, op)(pool_x(), 2, (2, 1.5)),
           TypeError, r"stride must be an int"),
          (f"{op} stride 3-tuple", lambda B, op=op: getattr(B, op)(pool_x(), 2, (1, 1, 1)),
           ValueError, r"stride must be an int or a pair of ints"),
          (f"{op} x int", lambda B, op=op: getattr(B, op)(np.ones((2, 3, 6, 6), dtype=int)),
           TypeError, r"x must be float32 or float64"),
          (f"{op} x list", lambda B, op=op: getattr(B, op)(pool_x().tolist()), TypeError,
           r"x must be a numpy array, got list"),
          (f"{op} x empty", lambda B, op=op: getattr(B, op)(rand(0, 3, 6, 6)), ValueError,
           r"x must not be empty"),
          (f"{op} x empty plane", lambda B, op=op: getattr(B, op)(rand(2, 3, 0, 6)),
           ValueError, r"x must not be empty"),
      ]],
    # ---- relu_forward -----------------------------------------------------------------
    ("relu x int", lambda B: B.relu_forward(np.arange(6).reshape(2, 3)), TypeError,
     r"x must be float32 or float64, got dtype int64"),
    ("relu x bool", lambda B: B.relu_forward(np.ones(3, dtype=bool)), TypeError,
     r"x must be float32 or float64"),
    ("relu x float16", lambda B: B.relu_forward(np.ones(3, dtype=np.float16)), TypeError,
     r"x must be float32 or float64"),
    ("relu x list", lambda B: B.relu_forward([1.0, -1.0]), TypeError,
     r"x must be a numpy array, got list"),
    ("relu x float", lambda B: B.relu_forward(1.0), TypeError, r"x must be a numpy array"),
    ("relu x empty", lambda B: B.relu_forward(rand(0)), ValueError, r"x must not be empty"),
    ("relu x empty 4-D", lambda B: B.relu_forward(rand(2, 0, 3, 3)), ValueError,
     r"x must not be empty"),
    # ---- dense_forward ----------------------------------------------------------------
    ("dense x 1-D", lambda B: dense(B, x=rand(5)), ValueError, r"x must be 2-D"),
    ("dense x 4-D", lambda B: dense(B, x=rand(4, 5, 1, 1)), ValueError, r"x must be 2-D"),
    ("dense w 1-D", lambda B: dense(B, w=rand(5)), ValueError, r"w must be 2-D"),
    ("dense w 3-D", lambda B: dense(B, w=rand(3, 5, 1)), ValueError, r"w must be 2-D"),
    ("dense b 2-D", lambda B: dense(B, b=rand(1, 3)), ValueError, r"b must be 1-D"),
    ("dense feature mismatch", lambda B: dense(B, w=rand(3, 6)), ValueError,
     r"feature mismatch: x has 5 features .* w \(out, in\) expects 6"),
    ("dense w laid out (in, out)", lambda B: dense(B, w=rand(5, 3)), ValueError,
     r"feature mismatch: x has 5 features .*expects 3"),
    ("dense bias too short", lambda B: dense(B, b=rand(2)), ValueError,
     r"b must have one bias per output: w has 3 outputs"),
    ("dense bias too long", lambda B: dense(B, b=rand(5)), ValueError,
     r"b must have one bias per output"),
    ("dense w float64", lambda B: dense(B, w=rand(3, 5, dtype=F64)), TypeError,
     r"w has dtype float64 but the other inputs are float32"),
    ("dense b float64", lambda B: dense(B, b=rand(3, dtype=F64)), TypeError,
     r"b has dtype float64"),
    ("dense x float64", lambda B: dense(B, x=rand(4, 5, dtype=F64)), TypeError,
     r"w has dtype float32 but the other inputs are float64"),
    ("dense x int", lambda B: dense(B, x=np.ones((4, 5), dtype=np.int64)), TypeError,
     r"x must be float32 or float64"),
    ("dense w int", lambda B: dense(B, w=np.ones((3, 5), dtype=np.int32)), TypeError,
     r"w must be float32 or float64"),
    ("dense x list", lambda B: dense(B, x=dense_args()[0].tolist()), TypeError,
     r"x must be a numpy array, got list"),
    ("dense w list", lambda B: dense(B, w=dense_args()[1].tolist()), TypeError,
     r"w must be a numpy array, got list"),
    ("dense b tuple", lambda B: dense(B, b=(0.0, 0.0, 0.0)), TypeError,
     r"b must be a numpy array, got tuple"),
    ("dense x empty", lambda B: dense(B, x=rand(0, 5)), ValueError, r"x must not be empty"),
    ("dense x no features", lambda B: dense(B, x=rand(4, 0), w=rand(3, 0)), ValueError,
     r"x must not be empty"),
    ("dense w empty", lambda B: dense(B, w=rand(0, 5), b=rand(0)), ValueError,
     r"w must not be empty"),
    # ---- softmax_cross_entropy --------------------------------------------------------
    ("softmax logits 1-D", lambda B: softmax(B, logits=rand(5), labels=np.array([0])),
     ValueError, r"logits must be 2-D"),
    ("softmax logits 3-D", lambda B: softmax(B, logits=rand(4, 5, 1)), ValueError,
     r"logits must be 2-D"),
    ("softmax logits int", lambda B: softmax(B, logits=np.ones((4, 5), dtype=np.int64)),
     TypeError, r"logits must be float32 or float64"),
    ("softmax logits list", lambda B: softmax(B, logits=LOGITS.tolist()), TypeError,
     r"logits must be a numpy array, got list"),
    ("softmax logits empty", lambda B: softmax(B, logits=rand(0, 5), labels=np.array([], int)),
     ValueError, r"logits must not be empty"),
    ("softmax logits no classes", lambda B: softmax(B, logits=rand(4, 0)), ValueError,
     r"logits must not be empty"),
    ("softmax label == K", lambda B: softmax(B, labels=np.array([0, 1, 5, 2])), ValueError,
     r"labels must lie in \[0, 5\) .*found 5"),
    ("softmax label > K", lambda B: softmax(B, labels=np.array([0, 1, 2, 99])), ValueError,
     r"labels must lie in \[0, 5\) .*found 99"),
    ("softmax label negative", lambda B: softmax(B, labels=np.array([0, -1, 2, 3])), ValueError,
     r"labels must lie in \[0, 5\) .*found -1"),
    ("softmax label huge uint64",
     lambda B: softmax(B, labels=np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64)), ValueError,
     r"labels must lie in \[0, 5\)"),
    ("softmax label huge int64",
     lambda B: softmax(B, labels=np.array([0, 1, 2, -2**63], dtype=np.int64)), ValueError,
     r"labels must lie in \[0, 5\)"),
    ("softmax labels float", lambda B: softmax(B, labels=np.array([0.0, 1.0, 4.0, 2.0])),
     TypeError, r"labels must be integers, got dtype float64"),
    ("softmax labels float list", lambda B: softmax(B, labels=[0.0, 1.0, 4.0, 2.0]), TypeError,
     r"labels must be integers"),
    ("softmax labels bool", lambda B: softmax(B, labels=np.array([True, False, True, False])),
     TypeError, r"labels must be integers"),
    ("softmax labels str", lambda B: softmax(B, labels=np.array(["0", "1", "2", "3"])),
     TypeError, r"labels must be integers"),
    ("softmax labels None", lambda B: softmax(B, labels=None), TypeError,
     r"labels must be integers"),
    ("softmax labels too short", lambda B: softmax(B, labels=np.array([0, 1, 2])), ValueError,
     r"labels must have shape \(4,\) to match logits"),
    ("softmax labels too long", lambda B: softmax(B, labels=np.array([0, 1, 2, 3, 4])),
     ValueError, r"labels must have shape \(4,\)"),
    ("softmax labels 2-D", lambda B: softmax(B, labels=LABELS.reshape(4, 1)), ValueError,
     r"labels must have shape \(4,\)"),
    ("softmax labels scalar", lambda B: softmax(B, labels=np.int64(1)), ValueError,
     r"labels must have shape \(4,\)"),
    ("softmax labels empty", lambda B: softmax(B, labels=np.array([], dtype=np.int64)),
     ValueError, r"labels must have shape \(4,\)"),
    # ---- batchnorm2d_forward ----------------------------------------------------------
    ("bn x 3-D", lambda B: bn(B, x=rand(3, 4, 4)), ValueError, r"x must be 4-D"),
    ("bn x 2-D", lambda B: bn(B, x=rand(2, 3)), ValueError, r"x must be 4-D"),
    ("bn x int", lambda B: bn(B, x=np.ones((2, 3, 4, 4), dtype=np.int64)), TypeError,
     r"x must be float32 or float64"),
    ("bn x list", lambda B: bn(B, x=bn_args()[0].tolist()), TypeError,
     r"x must be a numpy array, got list"),
    ("bn x empty", lambda B: bn(B, x=rand(0, 3, 4, 4)), ValueError, r"x must not be empty"),
    ("bn gamma too long", lambda B: bn(B, gamma=rand(4)), ValueError,
     r"gamma must have shape \(3,\)"),
    ("bn gamma 2-D", lambda B: bn(B, gamma=rand(3, 1)), ValueError, r"gamma must be 1-D"),
    ("bn gamma float64", lambda B: bn(B, gamma=rand(3, dtype=F64)), TypeError,
     r"gamma has dtype float64"),
    ("bn gamma list", lambda B: bn(B, gamma=[1.0, 1.0, 1.0]), TypeError,
     r"gamma must be a numpy array"),
    ("bn beta too short", lambda B: bn(B, beta=rand(2)), ValueError,
     r"beta must have shape \(3,\)"),
    ("bn beta int", lambda B: bn(B, beta=np.zeros(3, dtype=np.int64)), TypeError,
     r"beta must be float32 or float64"),
    ("bn running_mean shape", lambda B: bn(B, running_mean=np.zeros(4, F32)), ValueError,
     r"running_mean must have shape \(3,\)"),
    ("bn running_mean 2-D", lambda B: bn(B, running_mean=np.zeros((3, 1), F32)), ValueError,
     r"running_mean must have shape \(3,\)"),
    ("bn running_var shape", lambda B: bn(B, running_var=np.ones(2, F32)), ValueError,
     r"running_var must have shape \(3,\)"),
    ("bn running_mean float64", lambda B: bn(B, running_mean=np.zeros(3, F64)), TypeError,
     r"running_mean has dtype float64 but x is float32"),
    ("bn running_var int", lambda B: bn(B, running_var=np.ones(3, dtype=np.int64)), TypeError,
     r"running_var has dtype int64"),
    ("bn running_mean list", lambda B: bn(B, running_mean=[0.0, 0.0, 0.0]), TypeError,
     r"running_mean must be a numpy array, got list"),
    ("bn running_mean read-only",
     lambda B: bn(B, running_mean=readonly(np.zeros(3, F32))), ValueError,
     r"running_mean must be a writable contiguous array"),
    ("bn running_var read-only", lambda B: bn(B, running_var=readonly(np.ones(3, F32))),
     ValueError, r"running_var must be a writable contiguous array"),
    ("bn running_var non-contiguous", lambda B: bn(B, running_var=np.ones(6, F32)[::2]),
     ValueError, r"running_var must be a writable contiguous array"),
    ("bn running_mean reversed", lambda B: bn(B, running_mean=np.zeros(3, F32)[::-1]),
     ValueError, r"running_mean must be a writable contiguous array"),
    ("bn momentum -0.1", lambda B: bn(B, momentum=-0.1), ValueError,
     r"momentum must be a number in \[0, 1\]"),
    ("bn momentum 1.5", lambda B: bn(B, momentum=1.5), ValueError, r"momentum must be"),
    ("bn momentum nan", lambda B: bn(B, momentum=float("nan")), ValueError, r"momentum must be"),
    ("bn momentum True", lambda B: bn(B, momentum=True), ValueError, r"momentum must be"),
    ("bn momentum '0.1'", lambda B: bn(B, momentum="0.1"), ValueError, r"momentum must be"),
    ("bn momentum None", lambda B: bn(B, momentum=None), ValueError, r"momentum must be"),
    ("bn eps 0", lambda B: bn(B, eps=0), ValueError, r"eps must be a positive number"),
    ("bn eps 0.0", lambda B: bn(B, eps=0.0), ValueError, r"eps must be a positive number"),
    ("bn eps negative", lambda B: bn(B, eps=-1e-5), ValueError, r"eps must be a positive"),
    ("bn eps nan", lambda B: bn(B, eps=float("nan")), ValueError, r"eps must be a positive"),
    ("bn eps True", lambda B: bn(B, eps=True), ValueError, r"eps must be a positive"),
    ("bn eps '1e-5'", lambda B: bn(B, eps="1e-5"), ValueError, r"eps must be a positive"),
    ("bn eps None", lambda B: bn(B, eps=None), ValueError, r"eps must be a positive"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in FORWARD_CASES],
                         ids=[c[0] for c in FORWARD_CASES])
def test_forward_rejects(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call(backend)


def test_case_ids_unique():
    ids = [c[0] for c in FORWARD_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("bad", [dict(momentum=2.0), dict(eps=0.0),
                                 dict(gamma=rand(4)), dict(x=rand(2, 3, 4))])
def test_batchnorm_rejected_call_leaves_running_stats(backend, bad):
    """Validation happens before any in-place update of the running statistics."""
    bad = dict(bad)  # the parameter is shared between backends
    x, gamma, beta, rm, rv = bn_args()
    rm[:] = 0.5
    args = dict(x=x, gamma=gamma, beta=beta)
    kwargs = {k: bad.pop(k) for k in ("momentum", "eps") if k in bad}
    args.update(bad)
    with pytest.raises((ValueError, TypeError)):
        backend.batchnorm2d_forward(args["x"], args["gamma"], args["beta"], rm, rv, **kwargs)
    np.testing.assert_array_equal(rm, np.full(3, 0.5, F32))
    np.testing.assert_array_equal(rv, np.ones(3, F32))


# --------------------------------------------------------------------------------------
# dout of the wrong shape / ndim / dtype in every backward
# --------------------------------------------------------------------------------------

def forward_of(B, op, dtype=F32):
    """(forward output, cache, backward function) of op on valid inputs."""
    if op == "conv2d":
        out, cache = B.conv2d_forward(*conv_args(dtype))
    elif op == "conv2d_relu_maxpool2d":
        out, cache = B.conv2d_relu_maxpool2d_forward(*conv_args(dtype), 1, 1)
    elif op in ("maxpool2d", "avgpool2d"):
        out, cache = getattr(B, f"{op}_forward")(pool_x(dtype), 2)
    elif op == "relu":
        out, cache = B.relu_forward(pool_x(dtype))
    elif op == "dense":
        out, cache = B.dense_forward(*dense_args(dtype))
    elif op == "batchnorm2d":
        out, cache = B.batchnorm2d_forward(*bn_args(dtype))
    return out, cache, getattr(B, f"{op}_backward")


BACKWARD_OPS = ("conv2d", "conv2d_relu_maxpool2d", "maxpool2d", "avgpool2d", "relu", "dense",
                "batchnorm2d")


def bad_douts(out):
    """(id, dout, exception, regex) for a forward output ``out`` (float32)."""
    shape = out.shape
    bigger = shape[:-1] + (shape[-1] + 1,)
    return [
        ("wrong shape", np.ones(bigger, F32), ValueError,
         r"dout must have the forward output's shape"),
        ("wrong batch", np.ones((shape[0] + 1,) + shape[1:], F32), ValueError,
         r"dout must have the forward output's shape"),
        ("transposed shape", np.ones(shape[::-1], F32), ValueError, r"dout must have"),
        ("extra dim", np.ones(shape + (1,), F32), ValueError,
         rf"dout must be {len(shape)}-D"),
        ("missing dim", np.ones(shape[1:], F32), ValueError, rf"dout must be {len(shape)}-D"),
        ("flattened", np.ones(out.size, F32), ValueError, rf"dout must be {len(shape)}-D"),
        ("float64", np.ones(shape, F64), TypeError,
         r"dout has dtype float64 but the other inputs are float32"),
        ("int", np.ones(shape, np.int64), TypeError, r"dout must be float32 or float64"),
        ("list", np.ones(shape, F32).tolist(), TypeError, r"dout must be a numpy array"),
        ("None", None, TypeError, r"dout must be a numpy array"),
        ("empty", np.ones((0,) + shape[1:], F32), ValueError, r"dout must not be empty"),
    ]


BAD_DOUT_IDS = [case[0] for case in bad_douts(np.ones((2, 3, 4, 4), F32))]


@pytest.mark.parametrize("which", BAD_DOUT_IDS)
@pytest.mark.parametrize("op", BACKWARD_OPS)
def test_backward_rejects_bad_dout(backend, op, which):
    out, cache, backward = forward_of(backend, op)
    _, dout, exc, match = next(c for c in bad_douts(out) if c[0] == which)
    with pytest.raises(exc, match=match):
        backward(dout, cache)


@pytest.mark.parametrize("op", BACKWARD_OPS)
def test_backward_rejects_float32_dout_for_float64_forward(backend, op):
    out, cache, backward = forward_of(backend, op, F64)
    with pytest.raises(TypeError, match=r"dout has dtype float32 but the other inputs are "
                                        r"float64"):
        backward(np.ones(out.shape, F32), cache)


# --------------------------------------------------------------------------------------
# threads for the cython backend
# --------------------------------------------------------------------------------------

def cython_calls():
    """(id, call(threads)) for every op of the cython backend, forward and backward."""
    B = get_backend("cython")
    calls = {
        "conv2d_forward": lambda t: B.conv2d_forward(*conv_args(), threads=t),
        "conv2d_relu_maxpool2d_forward":
            lambda t: B.conv2d_relu_maxpool2d_forward(*conv_args(), 1, 1, threads=t),
        "maxpool2d_forward": lambda t: B.maxpool2d_forward(pool_x(), 2, threads=t),
        "avgpool2d_forward": lambda t: B.avgpool2d_forward(pool_x(), 2, threads=t),
        "relu_forward": lambda t: B.relu_forward(pool_x(), threads=t),
        "dense_forward": lambda t: B.dense_forward(*dense_args(), threads=t),
        "softmax_cross_entropy": lambda t: B.softmax_cross_entropy(LOGITS, LABELS, threads=t),
        "batchnorm2d_forward": lambda t: B.batchnorm2d_forward(*bn_args(), threads=t),
    }
    for op in BACKWARD_OPS:
        def backward_call(t, op=op):
            out, cache, backward = forward_of(B, op)
            return backward(np.ones_like(out), cache, threads=t)
        calls[f"{op}_backward"] = backward_call
    return calls


CYTHON_OPS = ("conv2d_forward", "conv2d_backward", "conv2d_relu_maxpool2d_forward",
              "conv2d_relu_maxpool2d_backward", "maxpool2d_forward", "maxpool2d_backward",
              "avgpool2d_forward", "avgpool2d_backward", "relu_forward", "relu_backward",
              "dense_forward", "dense_backward", "softmax_cross_entropy",
              "batchnorm2d_forward", "batchnorm2d_backward")


@pytest.mark.parametrize("threads, exc", [(0, ValueError), (-1, ValueError),
                                          ("x", ValueError), ("0", ValueError),
                                          (1.5, TypeError), (2.0, TypeError),
                                          (True, TypeError), ([2], TypeError)],
                         ids=["0", "-1", "'x'", "'0'", "1.5", "2.0", "True", "[2]"])
@pytest.mark.parametrize("op", CYTHON_OPS)
def test_cython_rejects_bad_threads(op, threads, exc):
    call = cython_calls()[op]
    with pytest.raises(exc, match=r"threads must be a positive integer"):
        call(threads)


@pytest.mark.parametrize("op", CYTHON_OPS)
def test_cython_threads_do_not_change_results(op):
    call = cython_calls()[op]
    results = [call(t) for t in (None, 1, 2, 7, "3")]
    flat = [r if isinstance(r, tuple) else (r,) for r in results]
    for other in flat[1:]:
        for a, b in zip(flat[0], other):
            if isinstance(a, np.ndarray):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
            elif isinstance(a, float):
                assert a == pytest.approx(b, rel=1e-5)


def test_cython_ops_listed():
    from cnn.backends import OPS
    assert set(CYTHON_OPS) == set(OPS)


# --------------------------------------------------------------------------------------
# Valid but unusual inputs are accepted
# --------------------------------------------------------------------------------------

def test_numpy_integer_stride_and_pad(backend):
    x, w, b = conv_args()
    ref, _ = backend.conv2d_forward(x, w, b, stride=2, pad=1)
    for stride, pad in [(np.int64(2), np.int32(1)), ((2, np.int8(2)), [1, 1]),
                        ([np.uint8(2), 2], (np.int64(1), 1))]:
        out, _ = backend.conv2d_forward(x, w, b, stride=stride, pad=pad)
        np.testing.assert_array_equal(out, ref)


def test_kernel_exactly_padded_input(backend):
    x, _, b = conv_args()
    out, _ = backend.conv2d_forward(x, rand(4, 3, 7, 7), b, pad=1)
    assert out.shape == (2, 4, 1, 1)
    out, _ = backend.maxpool2d_forward(pool_x(), 6)
    assert out.shape == (2, 3, 1, 1)


def test_softmax_accepts_integer_labels_of_any_width(backend):
    ref = backend.softmax_cross_entropy(LOGITS, LABELS)
    for labels in (LABELS.tolist(), LABELS.astype(np.uint8), LABELS.astype(np.int32),
                   LABELS.astype(np.uint64)):
        loss, dlogits = backend.softmax_cross_entropy(LOGITS, labels)
        assert loss == ref[0]
        np.testing.assert_array_equal(dlogits, ref[1])


def test_relu_accepts_any_shape(backend):
    for shape in [(1,), (7,), (3, 4), (2, 3, 4), (1, 2, 3, 4, 5)]:
        x = rand(*shape)
        out, cache = backend.relu_forward(x)
        np.testing.assert_array_equal(out, np.maximum(x, 0))
        dx = backend.relu_backward(np.ones_like(x), cache)
        assert dx.shape == shape


# --------------------------------------------------------------------------------------
# Non-contiguous inputs give the same results as their contiguous copies
# --------------------------------------------------------------------------------------

def every_other(a, axis=-1):
    """A non-contiguous view of ``a``'s values: every other element along ``axis``
    of an array twice as long (filled with junk in between)."""
    shape = list(a.shape)
    shape[axis] *= 2
    big = np.full(shape, 1e6, dtype=a.dtype)
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, 2)
    big[tuple(index)] = a
    view = big[tuple(index)]
    assert not view.flags.c_contiguous
    return view


def transposed(a):
    """A Fortran-ordered (non-C-contiguous) array equal to ``a``."""
    view = np.asfortranarray(a)
    assert not view.flags.c_contiguous or a.ndim < 2 or min(a.shape) == 1
    return view


def reversed_(a):
    """A view of ``a``'s values with a negative stride on the last axis."""
    view = a[..., ::-1].copy()[..., ::-1]
    assert not view.flags.c_contiguous or a.shape[-1] == 1
    return view


LAYOUTS = {"strided": every_other, "fortran": transposed, "reversed": reversed_}


def run_op(B, op, args, dout_layout=None):
    """Forward then backward with a fixed dout; returns every output as a flat list."""
    if op == "softmax_cross_entropy":
        loss, dlogits = B.softmax_cross_entropy(*args)
        return [np.float64(loss), dlogits]
    if op == "batchnorm2d":
        args = list(args)
        args[3], args[4] = args[3].copy(), args[4].copy()  # running stats: updated in place
        out, cache = B.batchnorm2d_forward(*args)
        extra = [args[3], args[4]]
    else:
        fwd = getattr(B, f"{op}_forward")
        out, cache = fwd(*args)
        extra = []
    dout = np.random.default_rng(9).standard_normal(out.shape).astype(out.dtype)
    if dout_layout is not None:
        dout = dout_layout(dout)
    grads = getattr(B, f"{op}_backward")(dout, cache)
    grads = list(grads) if isinstance(grads, tuple) else [grads]
    return [out] + grads + extra


def noncontiguous_cases():
    x, w, b = conv_args()
    dx_, dw_, db_ = dense_args()
    bx, gamma, beta, rm, rv = bn_args()
    p = pool_x()
    return {
        "conv2d": [x, w, b],
        "maxpool2d": [p, 2],
        "avgpool2d": [p, 3, 1],
        "relu": [p],
        "dense": [dx_, dw_, db_],
        "softmax_cross_entropy": [rand(4, 5), LABELS],
        "batchnorm2d": [bx, gamma, beta, rm, rv],
    }


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("op", ["conv2d", "maxpool2d", "avgpool2d", "relu", "dense",
                                "softmax_cross_entropy", "batchnorm2d"])
def test_noncontiguous_inputs_match_contiguous(backend, op, layout):
    args = noncontiguous_cases()[op]
    make = LAYOUTS[layout]
    ref = run_op(backend, op, args)
    # every array argument in the layout (running statistics must stay contiguous:
    # they are updated in place), and dout in the layout too
    odd = [make(a) if isinstance(a, np.ndarray) and not (op == "batchnorm2d" and i >= 3)
           else a for i, a in enumerate(args)]
    got = run_op(backend, op, odd, dout_layout=None if op == "softmax_cross_entropy" else make)
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        np.testing.assert_array_equal(g, r, err_msg=f"{op} output {i} ({layout})")


def test_noncontiguous_views_for_conv(backend):
    """The views of the brief: x[:, :, ::2] and a transposed weight array."""
    big = rand(2, 3, 10, 5)
    x = big[:, :, ::2]
    w = rand(3, 3, 3, 4).transpose(3, 0, 1, 2)                 # (4, 3, 3, 3), not C-order
    b = rand(8)[::2]
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or b.flags.c_contiguous)
    out, cache = backend.conv2d_forward(x, w, b, stride=1, pad=1)
    ref, ref_cache = backend.conv2d_forward(x.copy(), w.copy(), b.copy(), stride=1, pad=1)
    np.testing.assert_array_equal(out, ref)
    dout = rand(2, 4, 10, 5)[:, :, ::2]
    assert not dout.flags.c_contiguous
    for g, r in zip(backend.conv2d_backward(dout, cache),
                    backend.conv2d_backward(dout.copy(), ref_cache)):
        np.testing.assert_array_equal(g, r)


def test_inputs_are_not_modified(backend):
    """Forward and backward never write into their inputs (running stats aside)."""
    x, w, b = conv_args()
    keep = [a.copy() for a in (x, w, b)]
    out, cache = backend.conv2d_forward(x, w, b, pad=1)
    dout = np.ones_like(out)
    backend.conv2d_backward(dout, cache)
    for a, k in zip((x, w, b, dout), keep + [np.ones_like(out)]):
        np.testing.assert_array_equal(a, k)
    logits = rand(4, 5)
    keep = logits.copy()
    backend.softmax_cross_entropy(logits, LABELS)
    np.testing.assert_array_equal(logits, keep)


# --------------------------------------------------------------------------------------
# Nasty but valid inputs never crash the cython kernels (run in a child process)
# --------------------------------------------------------------------------------------

NASTY_SCRIPT = textwrap.dedent(r"""
    import numpy as np
    from cnn.backends import get_backend

    C, P = get_backend("cython"), get_backend("python")
    rng = np.random.default_rng(0)
    count = 0

    def r(*shape, dtype=np.float64):
        return rng.standard_normal(shape).astype(dtype)

    def same(a, b, what):
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        for u, v in zip(a, b):
            if isinstance(u, np.ndarray):
                assert u.shape == v.shape, (what, u.shape, v.shape)
                assert np.allclose(u, v, rtol=1e-4, atol=1e-4, equal_nan=True), what
            else:
                assert np.isclose(u, v, rtol=1e-4, atol=1e-4, equal_nan=True), what

    def check(op, args, kwargs=None, threads=(None, 1, 2, 64)):
        global count
        kwargs = kwargs or {}
        for dtype in (np.float32, np.float64):
            cast = [a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
                    else a for a in args]
            for t in threads:
                if op == "softmax_cross_entropy":
                    same(C.softmax_cross_entropy(*cast, threads=t),
                         P.softmax_cross_entropy(*cast), op)
                    count += 1
                    continue
                cargs = [a.copy() if isinstance(a, np.ndarray) else a for a in cast]
                pargs = [a.copy() if isinstance(a, np.ndarray) else a for a in cast]
                out, cache = getattr(C, op + "_forward")(*cargs, **kwargs, threads=t)
                ref, ref_cache = getattr(P, op + "_forward")(*pargs, **kwargs)
                same(out, ref, op + " forward " + repr([getattr(a, "shape", a) for a in args]))
                dout = rng.standard_normal(out.shape).astype(dtype)
                same(getattr(C, op + "_backward")(dout, cache, threads=t),
                     getattr(P, op + "_backward")(dout, ref_cache), op + " backward")
                count += 1

    # conv2d: 1x1 everything, N=1, kernel == input, kernel == padded input,
    # huge strides, large pads, asymmetric everything, more threads than images
    check("conv2d", [r(1, 1, 1, 1), r(1, 1, 1, 1), r(1)])
    check("conv2d", [r(1, 1, 1, 1), r(1, 1, 1, 1), r(1)], dict(stride=10**6, pad=0))
    check("conv2d", [r(1, 1, 1, 1), r(3, 1, 3, 3), r(3)], dict(pad=1))
    check("conv2d", [r(1, 2, 5, 5), r(3, 2, 5, 5), r(3)])
    check("conv2d", [r(1, 2, 5, 5), r(3, 2, 7, 7), r(3)], dict(pad=1))
    check("conv2d", [r(2, 2, 5, 5), r(3, 2, 9, 5), r(3)], dict(pad=(2, 0)))
    check("conv2d", [r(1, 2, 5, 5), r(3, 2, 3, 3), r(3)], dict(stride=10**6))
    check("conv2d", [r(1, 2, 5, 5), r(3, 2, 3, 3), r(3)], dict(stride=(2**40, 1)))
    check("conv2d", [r(1, 2, 5, 5), r(3, 2, 3, 3), r(3)], dict(stride=(1, 2**62), pad=(0, 3)))
    check("conv2d", [r(1, 1, 3, 3), r(2, 1, 3, 3), r(2)], dict(pad=20))
    check("conv2d", [r(1, 1, 3, 3), r(2, 1, 1, 1), r(2)], dict(pad=(0, 30), stride=(1, 7)))
    check("conv2d", [r(2, 3, 4, 6), r(2, 3, 1, 1), r(2)], dict(pad=3, stride=3))
    check("conv2d", [r(1, 1, 5, 5), r(1, 1, 5, 1), r(1)], dict(stride=(1, 4)))
    check("conv2d", [r(1, 1, 7, 1), r(1, 1, 3, 1), r(1)], dict(stride=2))
    check("conv2d", [r(1, 1, 1, 9), r(4, 1, 1, 9), r(4)], dict(pad=(5, 0), stride=(3, 1)))
    check("conv2d", [r(3, 2, 6, 6), r(1, 2, 2, 2), r(1)], dict(stride=5, pad=2))
    check("conv2d", [r(1, 1, 2, 2), r(1, 1, 2, 2), r(1)], dict(stride=3, pad=(1, 0)))
    # pooling: kernel == input, 1x1 windows, huge strides, overlapping windows
    for op in ("maxpool2d", "avgpool2d"):
        check(op, [r(1, 1, 1, 1), 1])
        check(op, [r(1, 1, 1, 1), 1, 10**6])
        check(op, [r(1, 1, 5, 5), 5])
        check(op, [r(1, 1, 5, 5), (5, 1)])
        check(op, [r(1, 1, 5, 5), 2, 10**6])
        check(op, [r(1, 1, 5, 5), 2, (1, 2**62)])
        check(op, [r(2, 3, 7, 5), 3, 1])
        check(op, [r(1, 1, 9, 2), (2, 2), (7, 1)])
        check(op, [r(1, 70, 3, 3), 3])
    check("maxpool2d", [np.full((1, 1, 4, 4), -np.inf), 2])
    check("maxpool2d", [np.full((1, 1, 4, 4), 3.0), 3, 1])
    # relu, dense, softmax, batchnorm: single elements and odd shapes
    check("relu", [r(1)])
    check("relu", [r(1, 1, 1, 1)])
    check("relu", [r(3, 1, 1, 7, 1)])
    check("relu", [r(100003)])
    check("dense", [r(1, 1), r(1, 1), r(1)])
    check("dense", [r(1, 1000), r(1, 1000), r(1)])
    check("dense", [r(1000, 1), r(3, 1), r(3)])
    check("dense", [r(2, 3), r(500, 3), r(500)])
    check("softmax_cross_entropy", [r(1, 1), np.array([0])])
    check("softmax_cross_entropy", [r(3, 1), np.array([0, 0, 0])])
    check("softmax_cross_entropy", [r(1, 1000), np.array([999])])
    check("softmax_cross_entropy", [np.array([[1e30, -1e30, 0.0]]), np.array([1])])
    check("softmax_cross_entropy", [np.array([[-1e30, -1e30]]), np.array([1])])
    check("batchnorm2d", [r(1, 1, 1, 1), r(1), r(1), np.zeros(1), np.ones(1)])
    check("batchnorm2d", [r(1, 1, 1, 1), r(1), r(1), np.zeros(1), np.ones(1)],
          dict(training=False))
    check("batchnorm2d", [np.full((2, 1, 3, 3), 7.0), r(1), r(1), np.zeros(1), np.ones(1)])
    check("batchnorm2d", [r(1, 70, 1, 2), r(70), r(70), np.zeros(70), np.ones(70)],
          dict(momentum=1.0, eps=1e-12))
    check("batchnorm2d", [r(3, 2, 1, 1), r(2), r(2), np.zeros(2), np.ones(2)],
          dict(momentum=0.0))

    # tampered and foreign caches: a Python exception is fine, a crash is not
    def mutations(item):
        if isinstance(item, np.ndarray):
            yield item[:1]
            yield item.reshape(-1)
            yield item[..., ::-1]
            yield item.T
            yield item.astype(np.float32 if item.dtype == np.float64 else np.float64)
            yield item.astype(np.int64)
            yield np.empty((0,) + item.shape[1:], item.dtype)
            if item.dtype.kind == "i":
                yield item + 10**9
                yield -item - 1
                yield np.full_like(item, 2**62)
            yield item.tolist()
        elif isinstance(item, tuple):
            yield (0, 0)
            yield (-1, -1)
            yield (10**9, 10**9)
            yield (2**62, 1)
            yield (1,)
        yield None
        yield 0

    def try_backward(backward, dout, cache):
        global count
        try:
            backward(dout, cache)
        except Exception:
            pass
        count += 1

    x4, w4 = r(2, 3, 6, 6), r(4, 3, 3, 3)
    forwards = {
        "conv2d": lambda B: B.conv2d_forward(x4, w4, r(4), stride=2, pad=1),
        "maxpool2d": lambda B: B.maxpool2d_forward(x4, 2),
        "avgpool2d": lambda B: B.avgpool2d_forward(x4, 3, 1),
        "relu": lambda B: B.relu_forward(x4),
        "dense": lambda B: B.dense_forward(r(4, 5), r(3, 5), r(3)),
        "batchnorm2d": lambda B: B.batchnorm2d_forward(x4, r(3), r(3), np.zeros(3),
                                                       np.ones(3)),
    }
    N = get_backend("naive")
    for op, forward in forwards.items():
        backward = getattr(C, op + "_backward")
        out, cache = forward(C)
        dout = np.ones_like(out)
        for other in (P, N):                     # another backend's cache
            try_backward(backward, dout, forward(other)[1])
        for bad in (None, (), cache[:-1] if isinstance(cache, tuple) else None):
            try_backward(backward, dout, bad)
        if isinstance(cache, tuple):
            for i, item in enumerate(cache):
                for m in mutations(item):
                    try_backward(backward, dout, cache[:i] + (m,) + cache[i + 1:])
        else:
            for m in mutations(cache):
                try_backward(backward, dout, m)
    print("survived", count)
""")


def test_cython_nasty_inputs_do_not_crash():
    get_backend("cython")  # a clear BackendUnavailable here rather than in the child
    proc = subprocess.run([sys.executable, "-c", NASTY_SCRIPT], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} (negative = killed by that signal)\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    assert "survived" in proc.stdout
