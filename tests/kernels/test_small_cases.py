"""Small, fixed shapes of every GEMM-based and pooling kernel, run in a child process
before the other kernel tests (tests/kernels/conftest.py).

Why a child: a kernel that indexes out of bounds (a rounding slip in im2col's
padded-stride bounds, a wrong GEMV size) can abort or segfault, and in-process
that kills pytest with no word of which op and shape did it. Here each case is
printed before it runs, so a dead child still names its last case, and the
fixture turns the crash into a failure of every kernel test that says so.
Mismatches are reported per case too (test_small_cases_agree_with_numpy).

Run ``python -m tests.kernels.test_small_cases`` to see the cases.
"""
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DTYPES = (np.float32, np.float64)
# One axis of a convolution: (size, kernel, stride, pad), every combination that fits.
AXES = [(size, k, s, p) for size, k, s, p in itertools.product((1, 2, 5), (1, 2, 3),
                                                               (1, 2, 3), (0, 1, 2))
        if k <= size + 2 * p]
POOLS = ((1, 1), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2))   # (kernel, stride)
# dense (N, D, M, threads): one-row and one-column products (GEMV) both ways, and
# thread blocks of one column: D=3 inputs on 2 threads, M=3 outputs on 2 threads.
DENSE = ((1, 1, 1, 1), (1, 7, 5, 1), (4, 1, 3, 1), (4, 6, 1, 1), (1, 5, 1, 1), (3, 7, 2, 1))
DENSE_THREADED = {np.float64: (100, 3, 28000, 2), np.float32: (1400, 2000, 3, 2)}


def cases():
    """(description, op, args, kwargs) of every case, small ones first."""
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        name = np.dtype(dtype).name
        for i, (v, h) in enumerate(zip(AXES, AXES[7:] + AXES[:7])):
            (H, KH, sh, ph), (W, KW, sw, pw) = v, h
            N, C, F = 1 + i % 2, 1 + (i // 2) % 2, (1, 3, 2)[i % 3]
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
            b = rng.standard_normal(F).astype(dtype)
            conv = dict(stride=(sh, sw), pad=(ph, pw))
            yield (f"conv2d {name} x{x.shape} w{w.shape} {conv}", "conv2d", (x, w, b), conv)
            Hc, Wc = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
            pk, ps = POOLS[i % len(POOLS)]
            pool = dict(pool_kernel=(min(pk, Hc), min(pk, Wc)), pool_stride=ps)
            yield (f"conv2d_relu_maxpool2d {name} x{x.shape} w{w.shape} {conv} {pool}",
                   "conv2d_relu_maxpool2d", (x, w, b), dict(conv, **pool))
        for op in ("maxpool2d", "avgpool2d"):
            for H, W, k, s in itertools.product((1, 2, 3, 5), (1, 4, 5), (1, 2, 3), (1, 2, 3)):
                if k <= min(H, W):
                    x = rng.standard_normal((2, 2, H, W)).astype(dtype)
                    yield (f"{op} {name} x{x.shape} kernel {k} stride {s}", op, (x,),
                           dict(kernel=k, stride=s))
        for N, D, M, threads in DENSE + (DENSE_THREADED[dtype],):
            args = (rng.standard_normal((N, D)).astype(dtype),
                    rng.standard_normal((M, D)).astype(dtype),
                    rng.standard_normal(M).astype(dtype))
            yield (f"dense {name} N={N} D={D} M={M} threads={threads}", "dense", args,
                   dict(threads=threads))


def check(op, args, kwargs):
    """The cython kernel against the NumPy backend, forward and backward; the fused
    op's inference pass against its training pass."""
    from cnn.backends import get_backend
    from tests.helpers import compare_backends
    threads = kwargs.pop("threads", None)
    if threads is None:
        compare_backends(op, args, kwargs, backends=("python", "cython"))
    else:  # the NumPy backend takes no thread count: compare its output to cython's
        cy, ref = get_backend("cython"), get_backend("python")
        from tests.helpers import assert_close
        dout = np.random.default_rng(1).standard_normal(
            (args[0].shape[0], args[1].shape[0])).astype(args[0].dtype)
        out, cache = getattr(cy, f"{op}_forward")(*args, threads=threads)
        grads = getattr(cy, f"{op}_backward")(dout, cache, threads=threads)
        want, ref_cache = getattr(ref, f"{op}_forward")(*args)
        assert_close(out, want, name="out")
        for g, r, n in zip(grads, getattr(ref, f"{op}_backward")(dout, ref_cache),
                           ("dx", "dw", "db")):
            assert_close(g, r, name=n)
    if op == "conv2d_relu_maxpool2d":
        cy = get_backend("cython")
        out, _ = cy.conv2d_relu_maxpool2d_forward(*args, **kwargs)
        lean, _ = cy.conv2d_relu_maxpool2d_forward(*args, **kwargs, need_cache=False)
        np.testing.assert_array_equal(lean, out, err_msg="need_cache=False vs cached forward")


def main():
    count = 0
    for desc, op, args, kwargs in cases():
        print("CASE", desc, flush=True)
        try:
            check(op, args, dict(kwargs))
        except Exception as exc:   # every failing case, not only the first
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            print("FAIL", desc, "|", type(exc).__name__, first, flush=True)
        count += 1
    print("DONE", count, flush=True)


def run_small_cases(timeout=120):
    """Run main() in a child; returns (crash message or None, FAIL lines)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.kernels.test_small_cases"],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
        stdout, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, code = (exc.stdout or b"").decode(), f"a timeout after {timeout} s"
        proc = None
    lines = stdout.splitlines()
    fails = [line[5:] for line in lines if line.startswith("FAIL ")]
    if lines and lines[-1].startswith("DONE"):
        return None, fails
    last = next((line[5:] for line in reversed(lines) if line.startswith("CASE ")), "import")
    if isinstance(code, int) and code < 0:
        code = f"signal {signal.Signals(-code).name}"
    stderr = proc.stderr[-2000:] if proc is not None else ""
    return f"the kernel child process died ({code}) on: {last}\n{stderr}", fails


def test_small_cases_agree_with_numpy(small_cases):
    _, fails = small_cases
    assert not fails, f"{len(fails)} small cases disagree:\n" + "\n".join(fails[:20])


def test_the_threaded_dense_cases_really_use_their_threads():
    """Thread blocks of one column (gemm.pxd's strided-x GEMV) need the product to be
    worth the threads: at least GEMM_WORK_PER_THREAD multiply-adds each."""
    from cnn._threads import GEMM_WORK_PER_THREAD
    for N, D, M, threads in DENSE_THREADED.values():
        assert threads == 1 or N * D * M >= threads * GEMM_WORK_PER_THREAD


if __name__ == "__main__":
    main()
