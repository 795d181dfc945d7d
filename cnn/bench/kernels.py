"""``python -m cnn.bench kernels``: one table per op, forward and backward.

For every op: shape, direction, median milliseconds for the Cython, NumPy-im2col
and naive backends (naive only on the small shapes, where its loops finish),
the speedups, and GFLOP/s for convolution.
"""
import sys

import numpy as np

from cnn.backends import get_backend
from cnn.bench.report import machine_line
from cnn.bench.timing import median_ms


def _conv_flops(x_shape, w_shape, stride, pad):
    N, C, H, W = x_shape
    F, _, KH, KW = w_shape
    Hout = (H + 2 * pad - KH) // stride + 1
    Wout = (W + 2 * pad - KW) // stride + 1
    return 2.0 * N * F * Hout * Wout * C * KH * KW


def kernel_cases(rng, dtype):
    """(op, shape label, forward args, forward kwargs, small?, forward FLOPs or None)."""
    def a(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def stats(C):
        return (np.abs(a(C)) + 1, a(C), np.zeros(C, dtype), np.ones(C, dtype))

    cases = [
        ("conv2d", "x(64,32,14,14) w(64,32,3,3) pad 1", (a(64, 32, 14, 14), a(64, 32, 3, 3) * 0.1,
                                                         a(64)), dict(stride=1, pad=1), False,
         _conv_flops((64, 32, 14, 14), (64, 32, 3, 3), 1, 1)),
        ("conv2d", "x(64,1,28,28) w(32,1,3,3) pad 1", (a(64, 1, 28, 28), a(32, 1, 3, 3), a(32)),
         dict(stride=1, pad=1), False, _conv_flops((64, 1, 28, 28), (32, 1, 3, 3), 1, 1)),
        ("conv2d", "x(4,3,10,10) w(4,3,3,3) pad 1", (a(4, 3, 10, 10), a(4, 3, 3, 3), a(4)),
         dict(stride=1, pad=1), True, _conv_flops((4, 3, 10, 10), (4, 3, 3, 3), 1, 1)),
        ("maxpool2d", "x(64,32,28,28) k2 s2", (a(64, 32, 28, 28),), dict(kernel=2), False, None),
        ("maxpool2d", "x(4,3,8,8) k2 s2", (a(4, 3, 8, 8),), dict(kernel=2), True, None),
        ("avgpool2d", "x(64,32,28,28) k2 s2", (a(64, 32, 28, 28),), dict(kernel=2), False, None),
        ("avgpool2d", "x(4,3,8,8) k2 s2", (a(4, 3, 8, 8),), dict(kernel=2), True, None),
        ("relu", "x(64,32,28,28)", (a(64, 32, 28, 28),), {}, False, None),
        ("relu", "x(4,3,8,8)", (a(4, 3, 8, 8),), {}, True, None),
        ("dense", "x(64,3136) w(128,3136)", (a(64, 3136), a(128, 3136) * 0.01, a(128)), {},
         False, 2.0 * 64 * 3136 * 128),
        ("dense", "x(64,128) w(10,128)", (a(64, 128), a(10, 128), a(10)), {}, False,
         2.0 * 64 * 128 * 10),
        ("dense", "x(4,20) w(5,20)", (a(4, 20), a(5, 20), a(5)), {}, True, None),
        ("batchnorm2d", "x(64,32,28,28)", (a(64, 32, 28, 28),) + stats(32), {}, False, None),
        ("batchnorm2d", "x(4,3,8,8)", (a(4, 3, 8, 8),) + stats(3), {}, True, None),
    ]
    labels = rng.integers(0, 10, 64)
    cases.append(("softmax_cross_entropy", "logits(64,10)", (a(64, 10), labels), {}, False, None))
    cases.append(("softmax_cross_entropy", "logits(4096,10)",
                  (a(4096, 10), rng.integers(0, 10, 4096)), {}, False, None))
    cases.append(("softmax_cross_entropy", "logits(4,10)", (a(4, 10), labels[:4]), {}, True, None))
    return cases


def _timings(backend, op, args, kwargs, threads, repeat):
    """{direction: ms} for one backend and op."""
    ops = get_backend(backend)
    extra = {"threads": threads}
    if op == "softmax_cross_entropy":
        fn = ops.softmax_cross_entropy
        return {"fwd+bwd": median_ms(lambda: fn(*args, **extra), repeat)}
    forward = getattr(ops, f"{op}_forward")
    backward = getattr(ops, f"{op}_backward")
    out, cache = forward(*args, **kwargs, **extra)
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(out.dtype)
    fwd = median_ms(lambda: forward(*args, **kwargs, **extra), repeat)
    bwd = median_ms(lambda: backward(dout, cache, **extra), repeat)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


def run_kernels(dtype_name, threads, repeat, out=None):
    out = out or sys.stdout
    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(0)
    print(machine_line(threads), file=out)
    print(f"dtype={dtype.name}; times are medians in ms; speedup = other backend / cython",
          file=out)
    head = (f"{'op':<22} {'shape':<36} {'dir':<8} {'cython':>9} {'numpy':>9} {'naive':>10} "
            f"{'vs numpy':>9} {'vs naive':>9} {'GFLOP/s':>8}")
    current = None
    for op, label, args, kwargs, small, flops in kernel_cases(rng, dtype):
        if op != current:
            print(f"\n{head}\n{'-' * len(head)}", file=out)
            current = op
        cy = _timings("cython", op, args, kwargs, threads, repeat)
        py = _timings("python", op, args, kwargs, threads, repeat)
        nv = _timings("naive", op, args, kwargs, threads, max(3, repeat // 5)) if small else None
        for direction in cy:
            gflops = ""
            if flops is not None:
                total = flops if direction == "fwd" else 2 * flops if direction == "bwd" \
                    else 3 * flops
                gflops = f"{total / cy[direction] / 1e6:8.1f}"
            naive = f"{nv[direction]:10.3f}" if nv else f"{'-':>10}"
            vs_naive = f"{nv[direction] / cy[direction]:8.1f}x" if nv else f"{'-':>9}"
            print(f"{op:<22} {label:<36} {direction:<8} {cy[direction]:9.3f} "
                  f"{py[direction]:9.3f} {naive} {py[direction] / cy[direction]:8.1f}x "
                  f"{vs_naive} {gflops:>8}", file=out)
            out.flush()
