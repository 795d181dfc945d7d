"""Benchmarks (not tests).

``python -m cnn.bench kernels``: one table per op: shape, direction, median
milliseconds for the Cython, NumPy-im2col and naive backends (naive only on the
small shapes, where its loops finish), the speedups, and GFLOP/s for convolution.

``python -m cnn.bench train``: one training epoch of lenet5 and convnet on
Fashion-MNIST-sized batches (60,000 images, batch 64, float32) on the Cython
and the NumPy backends, and in PyTorch when it is importable (a comparison
only, never a dependency: ``pip install torch``), with the ratios. By default
an epoch is timed as the median step time of ``--steps`` steps times the
epoch's step count; ``--full-epoch`` times whole epochs.

Run it on a quiet machine: every figure is a median of repeated calls, and
every backend runs in the same process, one after the other.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from cnn._threads import resolve_threads
from cnn.backends import get_backend


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(threads):
    model = cpu_model()
    coretype = os.environ.get("OPENBLAS_CORETYPE", "unset (OpenBLAS detects)")
    return (f"machine: {model}, {os.cpu_count()} cores; threads={threads}; "
            f"OPENBLAS_CORETYPE={coretype}; OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; numpy {np.__version__}; "
            f"python {platform.python_version()}")


def median_ms(fn, repeat, min_time=0.2):
    """Median wall time of fn() in ms, after one warm-up call.

    Repeats at least ``repeat`` times and until ``min_time`` seconds have passed.
    """
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


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


def run_kernels(dtype_name, threads, repeat, out=sys.stdout):
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


EPOCH_IMAGES = 60000


def _train_step_cnn(arch, backend, threads, batch, seed=0):
    """A closure running one training step of ``arch`` on random data."""
    from cnn.architectures import build_architecture
    from cnn.optim import make_optimizer
    model = build_architecture(arch).build(seed=seed, backend=backend, threads=threads)
    optimizer = make_optimizer("sgd", model, 0.01)
    loss_fn = get_backend(backend).softmax_cross_entropy
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        logits = model.forward(x, training=True)
        _, dlogits = loss_fn(logits, y)
        model.backward(dlogits, input_grad=False)
        optimizer.step()
    return step


def _train_step_torch(arch, threads, batch, seed=0, channels_last=False):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if arch == "lenet5":
        net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                            nn.Linear(84, 10))
    else:
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    x = torch.randn(batch, 1, 28, 28)
    if channels_last:   # often PyTorch's fastest CPU layout for convolutions
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    y = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
    return step


def _epoch_seconds(step, steps_per_epoch, sample_steps, full_epoch):
    step()
    step()
    if full_epoch:
        start = time.perf_counter()
        for _ in range(steps_per_epoch):
            step()
        return time.perf_counter() - start
    times = []
    for _ in range(sample_steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * steps_per_epoch


def _torch_epoch_seconds(arch, threads, batch, sample_steps, full_epoch, channels_last):
    """A PyTorch epoch time measured in a child process with the user's own
    environment: cnn sets OMP_WAIT_POLICY=PASSIVE for its OpenMP runtime when
    the user has not, and in this process that would also slow PyTorch's."""
    import cnn
    env = dict(os.environ)
    if cnn.OMP_WAIT_POLICY_DEFAULTED:
        env.pop("OMP_WAIT_POLICY", None)
    code = ("import torch, sys\n"   # torch (and its libgomp) load before cnn
            "from cnn.bench import _epoch_seconds, _train_step_torch\n"
            f"step = _train_step_torch({arch!r}, {threads}, {batch}, "
            f"channels_last={channels_last})\n"
            f"print(_epoch_seconds(step, {(EPOCH_IMAGES + batch - 1) // batch}, "
            f"{sample_steps}, {full_epoch}))\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def run_train(threads, batch, sample_steps, full_epoch, archs, out=sys.stdout):
    print(machine_line(threads), file=out)
    steps_per_epoch = (EPOCH_IMAGES + batch - 1) // batch
    how = "timed whole" if full_epoch else f"median of {sample_steps} steps x {steps_per_epoch}"
    print(f"one training epoch: {EPOCH_IMAGES:,} images, batch {batch}, float32, SGD; "
          f"seconds ({how})", file=out)
    try:
        import torch
        torch_version = torch.__version__
    except Exception as exc:  # not installed, or a broken install
        torch_version, torch_error = None, f"{type(exc).__name__}: {exc}"
    else:
        torch_error = None
    head = (f"{'network':<10} {'cython s':>9} {'numpy s':>9} {'numpy/cython':>13} "
            f"{'torch s':>9} {'torch/cython':>13} {'torch-cl s':>11} {'torch-cl/cython':>16}")
    print(head + "\n" + "-" * len(head), file=out)
    for arch in archs:
        cy = _epoch_seconds(_train_step_cnn(arch, "cython", threads, batch), steps_per_epoch,
                            sample_steps, full_epoch)
        py = _epoch_seconds(_train_step_cnn(arch, "python", threads, batch), steps_per_epoch,
                            max(5, sample_steps // 4), False)
        line = f"{arch:<10} {cy:9.2f} {py:9.2f} {py / cy:12.2f}x"
        if torch_version:
            th = _torch_epoch_seconds(arch, threads, batch, sample_steps, full_epoch, False)
            cl = _torch_epoch_seconds(arch, threads, batch, sample_steps, full_epoch, True)
            line += f" {th:9.2f} {th / cy:12.2f}x {cl:11.2f} {cl / cy:15.2f}x"
        else:
            line += f" {'-':>9} {'-':>13} {'-':>11} {'-':>16}"
        print(line, file=out, flush=True)
    print(f"torch: {torch_version or f'not importable ({torch_error}); pip install torch to compare'}; "
          f"torch-cl is channels_last; ratios above 1 mean cython is faster", file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnn.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels", help="every op, forward and backward, per backend")
    k.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    k.add_argument("--threads", type=int, default=None,
                   help="kernel threads (default: CNN_NUM_THREADS or all cores)")
    k.add_argument("--repeat", type=int, default=15, help="timed calls per figure (min)")
    k.add_argument("--coretype", action="append", default=None, metavar="NAME",
                   help="rerun under OPENBLAS_CORETYPE=NAME (repeatable, e.g. Haswell "
                        "SkylakeX); default: the environment as it is")
    t = sub.add_parser("train", help="one training epoch: cython vs numpy vs PyTorch")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--steps", type=int, default=40, help="steps timed per figure")
    t.add_argument("--full-epoch", action="store_true", help="time whole epochs")
    t.add_argument("--arch", action="append", default=None,
                   help="lenet5 and/or convnet (default: both)")
    t.add_argument("--coretype", action="append", default=None, metavar="NAME")
    args = parser.parse_args(argv)
    threads = resolve_threads(args.threads)
    if args.coretype:
        for name in args.coretype:
            if name.lower().startswith("skylakex") and not _has_avx512():
                print(f"skipping OPENBLAS_CORETYPE={name}: this CPU has no AVX-512",
                      flush=True)
                continue
            env = dict(os.environ, OPENBLAS_CORETYPE=name)
            rest = [a for a in (argv if argv is not None else sys.argv[1:])
                    if a != args.what]
            cmd = [sys.executable, "-m", "cnn.bench", args.what] + _without_coretype(rest)
            print(f"\n=== OPENBLAS_CORETYPE={name}", flush=True)
            subprocess.run(cmd, env=env, check=True)
        return 0
    if args.what == "kernels":
        run_kernels(args.dtype, threads, args.repeat)
    else:
        run_train(threads, args.batch_size, args.steps, args.full_epoch,
                  args.arch or ["lenet5", "convnet"])
    return 0


def _without_coretype(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--coretype":
            skip = True
        elif not a.startswith("--coretype="):
            out.append(a)
    return out


def _has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return any("avx512f" in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
