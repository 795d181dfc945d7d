"""Benchmarks (not tests).

``python -m cnn.bench`` (or ``python -m cnn.bench all``): every speed target of
the project measured in one run, printed as ONE table: our figure, PyTorch's
(NCHW and channels_last) and ONNX Runtime's when they are importable, the
ratios, the goal and whether it is met:

    convnet/lenet5 train epoch (s)   60,000 images, batch 64, float32: faster than
                                     PyTorch's best (convnet), at most 0.8x its time (lenet5)
    convnet accuracy, N epochs       the `python -m cnn.train` recipe in cnn and in PyTorch
                                     on Fashion-MNIST: test accuracy within 0.5 points
    convnet/lenet5 infer b64 (img/s) at least 3x (convnet) / 2x (lenet5) PyTorch's images/s
    convnet/lenet5 infer b1 (ms)     batch-1 latency below PyTorch's
    conv fwd+bwd / convnet step      2 threads at least 1.7x the speed of 1 thread
    HTTP b64 / in-process            /predict with 64 images under 2 gunicorn workers at
                                     least 70% of in-process images/s (benchmarks/serve.py)
    peak RSS convnet training (MiB)  a full-data `python -m cnn.train` epoch under 1 GiB

Options: ``--threads N`` (default: CNN_NUM_THREADS or all cores), ``--quick``
(few repeats; skips accuracy and HTTP: a smoke test), ``--skip
train,accuracy,infer,latency,scaling,http,memory``, ``--accuracy-epochs N``
(default 1, 0 skips), ``--data-dir DIR``, ``--json PATH`` (every figure as
JSON). Each row is measured on its own: a failure prints ``error: ...`` in
that row and the others still run. The comparison packages are never
dependencies; install them with ``pip install torch==2.13.0 onnxruntime onnx``.
PyTorch and ONNX Runtime always run in child processes with the caller's own
environment (``import cnn`` sets OMP_WAIT_POLICY=PASSIVE for its OpenMP
runtime when the user has not, which would also slow PyTorch's).

``python -m cnn.bench kernels``: one table per op: shape, direction, median
milliseconds for the Cython, NumPy-im2col and naive backends (naive only on the
small shapes, where its loops finish), the speedups, and GFLOP/s for convolution.

``python -m cnn.bench train``: one training epoch of lenet5 and convnet on
Fashion-MNIST-sized batches (60,000 images, batch 64, float32) on the Cython
and the NumPy backends, and in PyTorch when it is importable (a comparison
only, never a dependency: ``pip install torch``), with the ratios. By default
an epoch is timed as the median step time of ``--steps`` steps times the
epoch's step count; ``--full-epoch`` times whole epochs.

Every subcommand takes ``--coretype NAME`` (repeatable) to rerun itself under
``OPENBLAS_CORETYPE=NAME``. Run them on a quiet machine: every figure is a
median of repeated calls, and the measurements run one after the other.
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnn._threads import resolve_threads
from cnn.backends import get_backend

INSTALL_HINT = "pip install torch==2.13.0 onnxruntime onnx"
PACKAGE_HINTS = {
    "torch": "pip install torch==2.13.0 (on the development machines this picks a local "
             "CPU wheel)",
    "onnxruntime": "pip install onnxruntime",
    "onnx": "pip install onnx",
}


def package_version(name):
    """The installed version of an optional package, or None when it is missing.

    Finds the package without importing it (importing torch here would load its
    OpenMP runtime next to ours). A ``None`` entry in ``sys.modules`` counts as
    missing, as it does for ``import``.
    """
    if name in sys.modules and sys.modules[name] is None:
        return None
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def missing_hint(name):
    """'not installed; pip install ...' for an optional package."""
    return f"{name}: not installed; {PACKAGE_HINTS.get(name, f'pip install {name}')}"


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


def _torch_net(arch, seed=0, cnn_init=False):
    """The PyTorch twin of our ``lenet5`` or ``convnet``; with ``cnn_init`` it
    starts from exactly the weights ``build(seed=seed)`` gives our model (He
    normal, Glorot uniform for the classifier, zero biases)."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    if arch == "lenet5":
        net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                            nn.Linear(84, 10))
    elif arch == "convnet":
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    else:
        raise ValueError(f"no PyTorch twin for architecture {arch!r} (lenet5, convnet)")
    if cnn_init:
        from cnn.architectures import build_architecture
        ours = build_architecture(arch).build(seed=seed, backend="python")
        theirs = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
        mine = [layer for layer in ours.layers if "w" in layer.params]
        with torch.no_grad():
            for m, layer in zip(theirs, mine, strict=True):
                m.weight.copy_(torch.from_numpy(layer.params["w"]))
                m.bias.copy_(torch.from_numpy(layer.params["b"]))
    return net


def _train_step_torch(arch, threads, batch, seed=0, channels_last=False):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    net = _torch_net(arch, seed)
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


def _child_env():
    """The caller's environment as it was before ``import cnn`` defaulted
    OMP_WAIT_POLICY (PASSIVE slows PyTorch's OpenMP runtime)."""
    import cnn
    env = dict(os.environ)
    if cnn.OMP_WAIT_POLICY_DEFAULTED:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def _last_line(text):
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _child_call(func, kwargs, preload=("torch",), timeout=900):
    """``cnn.bench.<func>(**kwargs)`` in a child Python with the caller's own
    environment; the modules in ``preload`` (torch and its libgomp) load before
    cnn. Returns the JSON the function's result became."""
    code = ["import json, sys"]
    for name in preload:
        code.append(f"import {name}")
    code += [f"from cnn.bench import {func}",
             f"result = {func}(**json.loads({json.dumps(kwargs)!r}))",
             "print(json.dumps(result))"]
    proc = subprocess.run([sys.executable, "-c", "\n".join(code)], env=_child_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child process exited with code {proc.returncode}: "
                           f"{_last_line(proc.stderr) or _last_line(proc.stdout)}")
    try:
        return json.loads(_last_line(proc.stdout))
    except ValueError:
        raise RuntimeError(f"child process printed no result: "
                           f"{_last_line(proc.stdout) or _last_line(proc.stderr)!r}") from None


def _torch_epoch_child(arch, threads, batch, sample_steps, full_epoch, channels_last):
    step = _train_step_torch(arch, threads, batch, channels_last=channels_last)
    return _epoch_seconds(step, (EPOCH_IMAGES + batch - 1) // batch, sample_steps, full_epoch)


def _torch_epoch_seconds(arch, threads, batch, sample_steps, full_epoch, channels_last):
    """A PyTorch epoch time measured in a child process with the user's own
    environment: cnn sets OMP_WAIT_POLICY=PASSIVE for its OpenMP runtime when
    the user has not, and in this process that would also slow PyTorch's."""
    return float(_child_call("_torch_epoch_child", dict(
        arch=arch, threads=threads, batch=batch, sample_steps=sample_steps,
        full_epoch=bool(full_epoch), channels_last=bool(channels_last))))


# ---------------------------------------------------------------- python -m cnn.bench [all]

ROW_GROUPS = ("train", "accuracy", "infer", "latency", "scaling", "http", "memory")
COLUMNS = (("cnn", 10), ("torch", 10), ("torch-cl", 10), ("onnxrt", 10), ("ours/best", 10),
           ("ours/NCHW", 10), ("ours/ORT", 9), ("goal", 11), ("met NCHW/best", 14))
LABEL_WIDTH = 34
COMPARED = ("torch", "torch-cl", "onnxrt")


@dataclass
class Row:
    """One line of the table. ``cells`` maps column names to text; ``text``, when
    set, replaces the cells (skipped, not measured, error)."""
    group: str
    label: str
    cells: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    text: str = ""

    def as_dict(self):
        return {"group": self.group, "label": self.label, "figures": self.figures,
                "goal": self.cells.get("goal"), "met": self.cells.get("met NCHW/best"),
                "notes": self.notes, "text": self.text or None}


def _log(message):
    print(f"[cnn.bench] {message}", file=sys.stderr, flush=True)


def _error(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def _fmt(value, unit):
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f}"
    if unit == "img/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if unit == "%":
        return f"{100 * value:.2f}%"
    if unit == "x":
        return f"{value:.2f}x" if abs(value) >= 0.1 else f"{value:.2g}x"
    if unit == "MiB":
        return f"{value:.0f}"
    return f"{value:g}"


def _meets(ratio, goal):
    op, bound = goal
    if ratio is None:
        return None
    return {"<": ratio < bound, "<=": ratio <= bound, ">=": ratio >= bound,
            ">": ratio > bound}[op]


def _yes(flag):
    return "-" if flag is None else ("yes" if flag else "no")


def _goal_text(goal):
    op, bound = goal
    return f"{op}{bound:g}x"


def compare_row(group, label, unit, ours, theirs, goal, higher_is_better):
    """A row comparing ``ours`` with the figures in ``theirs`` (column -> float, or
    None when the package is missing, or an ``error: ...`` string). Ratios are
    ours / theirs in the row's unit; the goal is on the ratio to PyTorch's best
    of NCHW and channels_last, and the row also says whether it holds against
    NCHW alone."""
    row = Row(group, label)
    row.figures = {"unit": unit, "cnn": ours}
    row.cells["cnn"] = _fmt(ours, unit)
    numbers = {}
    for col in COMPARED:
        value = theirs.get(col, "n/a")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[col] = float(value)
            row.cells[col] = _fmt(value, unit)
            row.figures[col] = float(value)
        elif isinstance(value, str) and value.startswith("error"):
            row.cells[col] = "error"
            row.notes.append(f"{col} {value}")
            row.figures[col] = value
        else:
            row.cells[col] = "n/a" if value is None else "-"
            row.figures[col] = None
    pick = max if higher_is_better else min
    torch_figs = [numbers[c] for c in ("torch", "torch-cl") if c in numbers]
    best = pick(torch_figs) if torch_figs else None
    ratio = {
        "best": ours / best if ours and best else None,
        "NCHW": ours / numbers["torch"] if ours and "torch" in numbers else None,
        "ORT": ours / numbers["onnxrt"] if ours and "onnxrt" in numbers else None,
    }
    row.cells["ours/best"] = _fmt(ratio["best"], "x")
    row.cells["ours/NCHW"] = _fmt(ratio["NCHW"], "x")
    row.cells["ours/ORT"] = _fmt(ratio["ORT"], "x")
    row.cells["goal"] = _goal_text(goal)
    met_nchw, met_best = _meets(ratio["NCHW"], goal), _meets(ratio["best"], goal)
    row.cells["met NCHW/best"] = f"{_yes(met_nchw)}/{_yes(met_best)}"
    if best is not None and len(torch_figs) == 2:
        row.notes.append("best=" + ("torch-cl" if numbers["torch-cl"] == best else "torch"))
    row.figures.update(torch_best=best, ratio_vs_best=ratio["best"],
                       ratio_vs_nchw=ratio["NCHW"], ratio_vs_onnxrt=ratio["ORT"],
                       goal=_goal_text(goal), met_vs_best=met_best, met_vs_nchw=met_nchw)
    return row


def _safe(fn):
    """fn() or an 'error: ...' string."""
    try:
        return fn()
    except Exception as exc:  # one failing comparison must not lose the row
        return f"error: {_error(exc)}"


# -- training epoch


TRAIN_GOALS = {"convnet": ("<", 1.0), "lenet5": ("<=", 0.8)}


def row_train(arch, threads, steps, have_torch, batch=64):
    """Row: one epoch (60,000 images) as the median step time x the step count."""
    steps_per_epoch = (EPOCH_IMAGES + batch - 1) // batch
    ours = _epoch_seconds(_train_step_cnn(arch, "cython", threads, batch), steps_per_epoch,
                          steps, False)
    theirs = {"torch": None, "torch-cl": None, "onnxrt": "-"}
    if have_torch:
        for col, cl in (("torch", False), ("torch-cl", True)):
            theirs[col] = _safe(lambda cl=cl: _torch_epoch_seconds(arch, threads, batch, steps,
                                                                   False, cl))
    return compare_row("train", f"{arch} train epoch (s)", "s", ours, theirs,
                       TRAIN_GOALS[arch], higher_is_better=False)


# -- inference


INFER_GOALS = {"convnet": (">=", 3.0), "lenet5": (">=", 2.0)}
LATENCY_GOAL = ("<", 1.0)


def _cnn_twin(arch, net=None):
    """Our ``arch`` built from seed 0, holding the weights of the PyTorch twin
    ``net`` when there is one (the reverse of ``_torch_net(cnn_init=True)``)."""
    from cnn.architectures import build_architecture
    model = build_architecture(arch).build(seed=0, backend="python")
    if net is not None:
        theirs = [m for m in net if hasattr(m, "weight")]     # Conv2d and Linear
        mine = [layer for layer in model.layers if "w" in layer.params]
        for m, layer in zip(theirs, mine, strict=True):
            layer.params["w"][...] = m.weight.detach().numpy()
            layer.params["b"][...] = m.bias.detach().numpy()
    return model


def _onnx_bytes(arch, net):
    """(ONNX model bytes, how it was made): torch.onnx.export of the PyTorch
    module when that works (its new exporter needs onnxscript, the TorchScript
    one is the fallback), else cnn.export's graph of our model holding the same
    weights (our own seed-0 weights when PyTorch is missing). cnn.export's graph
    adds Softmax and ArgMax outputs to the logits: microseconds at batch 64."""
    import io
    import warnings
    problems = []
    if net is not None:
        import torch
        x = torch.randn(1, 1, 28, 28)
        for how, kwargs in (("torch.onnx.export (dynamo)", {}),
                            ("torch.onnx.export (TorchScript)",
                             dict(dynamo=False, dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}))):
            buf = io.BytesIO()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if kwargs:
                        torch.onnx.export(net, (x,), buf, input_names=["x"],
                                          output_names=["y"], **kwargs)
                    else:
                        torch.onnx.export(net, (x,), buf, input_names=["x"],
                                          output_names=["y"],
                                          dynamic_shapes={"input": {0: torch.export.Dim("N")}})
                data = buf.getvalue()
                if data:
                    return data, how
                problems.append(f"{how}: wrote nothing")
            except Exception as exc:
                problems.append(f"{how}: {type(exc).__name__}")
    from cnn.export import to_onnx
    data = to_onnx(_cnn_twin(arch, net)).SerializeToString()
    if net is not None:
        return data, "cnn.export of the torch weights (" + "; ".join(problems) + ")"
    return data, "cnn.export of cnn's weights (no torch)"


def _infer_child(arch, threads, repeat, min_time, layouts, ort, batches):
    """In a child process: {column: {str(batch): median ms} or {"error": ...}} for
    PyTorch in ``layouts`` (torch, torch-cl) and ONNX Runtime when ``ort``."""
    result = {}
    net = None
    if layouts:
        import torch
        torch.set_num_threads(threads)
        for col in layouts:
            try:
                model = _torch_net(arch).eval()
                fig = {}
                for batch in batches:
                    x = torch.randn(batch, 1, 28, 28)
                    if col == "torch-cl":
                        model = model.to(memory_format=torch.channels_last)
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.inference_mode():
                        fig[str(batch)] = median_ms(lambda model=model, x=x: model(x),
                                                    repeat, min_time)
                result[col] = fig
            except Exception as exc:
                result[col] = {"error": _error(exc)}
        net = _torch_net(arch).eval()
    if ort:
        try:
            import onnxruntime as ort_mod
            data, how = _onnx_bytes(arch, net)
            result["onnx_export"] = how
            opts = ort_mod.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort_mod.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort_mod.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort_mod.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            fig = {}
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(
                    np.float32)
                fig[str(batch)] = median_ms(lambda x=x: sess.run(None, {name: x}), repeat, min_time)
            result["onnxrt"] = fig
        except Exception as exc:
            result["onnxrt"] = {"error": _error(exc)}
    return result


def rows_infer(arch, threads, repeat, min_time, have_torch, have_ort, batch=True,
               latency=True):
    """Rows: images/s at batch 64 and batch-1 latency of ``arch``: ours
    (model.forward(training=False, need_cache=False), Cython backend) here, PyTorch's and ONNX
    Runtime's in one child process."""
    from cnn.architectures import build_architecture
    batches = ([64] if batch else []) + ([1] if latency else [])
    model = build_architecture(arch).build(seed=0, backend="cython", threads=threads)
    rng = np.random.default_rng(0)
    ours = {}
    for b in batches:
        x = rng.standard_normal((b, 1, 28, 28)).astype(np.float32)
        ours[b] = median_ms(lambda x=x: model.forward(x, training=False, need_cache=False),
                            repeat, min_time)
    theirs = {b: {"torch": None, "torch-cl": None, "onnxrt": None} for b in batches}
    export = None
    if have_torch or have_ort:
        layouts = ["torch", "torch-cl"] if have_torch else []
        try:
            child = _child_call("_infer_child", dict(
                arch=arch, threads=threads, repeat=repeat, min_time=min_time, layouts=layouts,
                ort=bool(have_ort), batches=batches), preload=("torch",) if have_torch else ())
        except Exception as exc:
            child = {col: {"error": _error(exc)} for col in layouts + ["onnxrt"] * have_ort}
        export = child.pop("onnx_export", None)
        for col, figs in child.items():
            for b in batches:
                theirs[b][col] = f"error: {figs['error']}" if "error" in figs else \
                    figs[str(b)]
    rows = []
    if batch:
        img_s = {c: 64e3 / v if isinstance(v, float) else v for c, v in theirs[64].items()}
        row = compare_row("infer", f"{arch} infer b64 (img/s)", "img/s", 64e3 / ours[64],
                          img_s, INFER_GOALS[arch], higher_is_better=True)
        rows.append(row)
    if latency:
        rows.append(compare_row("latency", f"{arch} infer b1 (ms)", "ms", ours[1], theirs[1],
                                LATENCY_GOAL, higher_is_better=False))
    for row in rows:
        row.figures["onnx_export"] = export
    return rows


# -- thread scaling


SCALING_GOAL = 1.7


def _interleaved_ms(fns, rounds, per_round):
    """Median ms of each fn, timed in alternating rounds so that a change in the
    machine's load hits every fn alike."""
    for fn in fns:
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


def _scaling_row(label, make, rounds, per_round):
    from cnn._threads import available_cores
    row = Row("scaling", label)
    cores = available_cores()
    if cores < 2:
        row.text = f"skipped: this machine has {cores} core (2 threads need 2 cores)"
        return row
    one, two = _interleaved_ms([make(1), make(2)], rounds, per_round)
    speedup = one / two
    ok = speedup >= SCALING_GOAL
    row.cells.update({"cnn": _fmt(speedup, "x"), "goal": f">={SCALING_GOAL:g}x",
                      "met NCHW/best": _yes(ok)})
    row.notes.append(f"1 thread {one:.2f} ms, 2 threads {two:.2f} ms")
    row.figures = {"unit": "x", "cnn": speedup, "ms_1_thread": one, "ms_2_threads": two,
                   "goal": f">={SCALING_GOAL:g}x", "met": ok}
    return row


def row_scaling_conv(rounds, per_round):
    """Row: conv2d forward+backward of x(64,32,14,14) w(64,32,3,3) pad 1, 2 vs 1 thread."""
    ops = get_backend("cython")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    dout = rng.standard_normal((64, 64, 14, 14)).astype(np.float32)

    def make(threads):
        def fn():
            _, cache = ops.conv2d_forward(x, w, b, stride=1, pad=1, threads=threads)
            ops.conv2d_backward(dout, cache, threads=threads)
        return fn
    return _scaling_row("conv fwd+bwd 2 vs 1 thread", make, rounds, per_round)


def row_scaling_step(rounds, per_round):
    """Row: one convnet training step (batch 64), 2 vs 1 thread."""
    return _scaling_row("convnet step 2 vs 1 thread",
                        lambda threads: _train_step_cnn("convnet", "cython", threads, 64),
                        rounds, per_round)


# -- accuracy


ACCURACY_POINTS = 0.5


def _recipe_data(data_dir, seed):
    """The data of `python -m cnn.train`'s defaults: 10% validation split with
    ``seed``, scalar normalisation fitted on the training part."""
    from cnn.data import Normalizer, load_dataset, train_val_split
    data = load_dataset(data_dir)
    tr_x, tr_y, va_x, va_y = train_val_split(data.train_images, data.train_labels, 0.1, seed)
    norm = Normalizer.fit(tr_x)
    return (data, norm(tr_x), tr_y.astype(np.int64), norm(va_x), va_y.astype(np.int64),
            norm(data.test_images), data.test_labels.astype(np.int64))


def cnn_accuracy(epochs, threads, data_dir=None, seed=0, stream=None):
    """Test accuracy of convnet after ``epochs`` epochs of `python -m cnn.train`'s
    default recipe (Adam lr 1e-3, per-step cosine schedule, batch 64, seed 0)."""
    from cnn.architectures import build_architecture
    from cnn.optim import Schedule, make_optimizer
    from cnn.training import evaluate_logits, fit
    data, x_tr, y_tr, x_va, y_va, x_te, y_te = _recipe_data(data_dir, seed)
    model = build_architecture("convnet", data.num_classes, (1,) + tuple(data.image_shape))
    model.build(seed=seed, backend="cython", threads=threads)
    optimizer = make_optimizer("adam", model, 1e-3)
    schedule = Schedule(1e-3, "cosine", epochs=epochs, step_size=max(1, epochs // 3))
    start = time.perf_counter()
    fit(model, get_backend("cython").softmax_cross_entropy, optimizer, schedule,
        (x_tr, y_tr), (x_va, y_va), epochs=epochs, batch_size=64,
        rng=np.random.default_rng(seed + 1), progress=False, stream=stream or sys.stderr)
    _, acc = evaluate_logits(model, x_te, y_te)
    return {"test_acc": acc, "seconds": time.perf_counter() - start}


def _torch_accuracy_child(epochs, threads, data_dir=None, seed=0):
    """In a child process: the same recipe in PyTorch (same split, normalisation,
    initial weights, shuffling, Adam and per-step cosine schedule); test accuracy."""
    import torch
    import torch.nn.functional as F

    from cnn.optim import Schedule
    torch.set_num_threads(threads)
    _, x_tr, y_tr, _, _, x_te, y_te = _recipe_data(data_dir, seed)
    net = _torch_net("convnet", seed, cnn_init=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    schedule = Schedule(1e-3, "cosine", epochs=epochs)
    rng = np.random.default_rng(seed + 1)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    n, batch = len(x_tr), 64
    steps = (n + batch - 1) // batch
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = schedule(epoch + step / steps)
            idx = order[step * batch:(step + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(xt[idx]), yt[idx]).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x_te), 1000):
            logits = net(torch.from_numpy(x_te[i:i + 1000]))
            correct += int((logits.argmax(1).numpy() == y_te[i:i + 1000]).sum())
    return {"test_acc": correct / len(x_te), "seconds": seconds}


def row_accuracy(epochs, threads, data_dir, have_torch, ours=None):
    """Row: test accuracy of convnet in cnn and in PyTorch after ``epochs`` epochs.
    ``ours`` ({"test_acc": ...}) reuses a finished run of the same recipe."""
    row = Row("accuracy", f"convnet accuracy, {epochs} epoch{'s' * (epochs != 1)}")
    if ours is None:
        ours = cnn_accuracy(epochs, threads, data_dir)
    row.figures = {"unit": "accuracy", "epochs": epochs, "cnn": ours["test_acc"],
                   "cnn_seconds": ours.get("seconds"), "goal": f"|diff|<={ACCURACY_POINTS}pt"}
    row.cells.update({"cnn": _fmt(ours["test_acc"], "%"), "goal": f"|d|<={ACCURACY_POINTS}pt",
                      "torch-cl": "-", "onnxrt": "-"})
    if ours.get("how"):
        row.notes.append(ours["how"])
    if not have_torch:
        row.cells.update({"torch": "n/a", "met NCHW/best": "-"})
        return row
    try:
        theirs = _child_call("_torch_accuracy_child", dict(
            epochs=epochs, threads=threads, data_dir=data_dir), timeout=1800 * max(1, epochs))
    except Exception as exc:
        row.cells.update({"torch": "error", "met NCHW/best": "-"})
        row.notes.append(f"torch error: {_error(exc)}")
        row.figures["torch"] = f"error: {_error(exc)}"
        return row
    diff = 100 * (ours["test_acc"] - theirs["test_acc"])
    ok = abs(diff) <= ACCURACY_POINTS
    row.cells.update({"torch": _fmt(theirs["test_acc"], "%"), "ours/best": f"{diff:+.2f}pt",
                      "ours/NCHW": f"{diff:+.2f}pt", "met NCHW/best": f"{_yes(ok)}/{_yes(ok)}"})
    row.figures.update(torch=theirs["test_acc"], torch_seconds=theirs["seconds"],
                       diff_points=diff, met=ok)
    return row


# -- memory


MEMORY_LIMIT_MIB = 1024


def run_train_child(threads, out_path, data_dir=None, epochs=1, timeout=1800):
    """``python -m cnn.train --arch convnet`` on all of the data in a child
    process: {"peak_rss_mib", "test_acc", "seconds", "returncode", "output"}.
    The peak resident memory is the child's own (os.wait4), so children this
    process ran before (PyTorch) do not count."""
    import threading
    cmd = [sys.executable, "-m", "cnn.train", "--arch", "convnet", "--epochs", str(epochs),
           "--out", str(out_path), "--progress", "lines", "--backend", "cython",
           "--threads", str(threads)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.abspath(out_path)))
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        output = proc.stdout.read()
        proc.stdout.close()
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            peak_kib = usage.ru_maxrss
        else:   # the largest of every waited-for child, this one included
            import resource
            proc.wait()
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    finally:
        timer.cancel()
    match = re.search(r"test_acc:\s*([0-9.]+)", output)
    return {"peak_rss_mib": peak_kib / 1024, "returncode": proc.returncode,
            "test_acc": float(match[1]) if match else None,
            "seconds": time.perf_counter() - start, "command": " ".join(cmd),
            "output": output}


def row_memory(run):
    """Row: peak RSS of the full-data training child ``run`` (run_train_child)."""
    row = Row("memory", "peak RSS convnet training (MiB)")
    if run["returncode"] != 0:
        row.text = (f"error: cnn.train exited with code {run['returncode']}: "
                    f"{_last_line(run['output'])}")
        return row
    mib = run["peak_rss_mib"]
    ok = mib < MEMORY_LIMIT_MIB
    row.cells.update({"cnn": _fmt(mib, "MiB"), "goal": f"<{MEMORY_LIMIT_MIB} MiB",
                      "met NCHW/best": _yes(ok)})
    row.notes.append(f"1 epoch, 60k images, {run['seconds']:.0f} s"
                     + (f", test acc {100 * run['test_acc']:.2f}%" if run["test_acc"] else ""))
    row.figures = {"unit": "MiB", "cnn": mib, "goal": f"<{MEMORY_LIMIT_MIB}", "met": ok,
                   "test_acc": run["test_acc"], "seconds": run["seconds"]}
    return row


# -- HTTP


HTTP_GOAL = 0.7


def serve_script():
    """benchmarks/serve.py of the repository checkout this package runs from."""
    import cnn
    return Path(cnn.__file__).resolve().parents[1] / "benchmarks" / "serve.py"


def row_http(script=None, model=None, requests=200, seconds=20, timeout=900, fmt=None):
    """Row: `serve.py --batches 64 --concurrency 8 --workers 2 --json`'s HTTP
    images/s against its in-process images/s; ``not measured: ...`` when the
    script is missing, fails or has no --json."""
    row = Row("http", "HTTP b64 / in-process")
    script = Path(script) if script else serve_script()
    if not script.is_file():
        row.text = f"not measured: {script} not found (not a repository checkout)"
        return row
    env = _child_env()
    try:
        help_text = subprocess.run([sys.executable, str(script), "--help"], env=env,
                                   capture_output=True, text=True, timeout=120).stdout
    except Exception as exc:
        row.text = f"not measured: {script.name} --help failed: {_error(exc)}"
        return row
    if "--json" not in help_text:
        row.text = f"not measured: {script.name} has no --json option yet"
        return row
    cmd = [sys.executable, str(script), "--batches", "64", "--concurrency", "8", "--workers",
           "2", "--json", "--requests", str(requests), "--seconds", str(seconds)]
    if model:
        cmd += ["--model", str(model)]
    if fmt:
        cmd += ["--format", str(fmt)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row.text = f"not measured: {script.name} took more than {timeout} s"
        return row
    try:
        result = json.loads(_last_line(proc.stdout))
    except ValueError:
        result = None
    if not isinstance(result, dict):
        if proc.returncode != 0:
            row.text = (f"not measured: {script.name} exited with code {proc.returncode}: "
                        f"{_last_line(proc.stderr) or _last_line(proc.stdout)}")
        else:
            row.text = f"not measured: no JSON result on the last line of {script.name}"
        return row
    if result.get("error"):
        row.text = f"not measured: {script.name}: {result['error']}"
        return row
    if proc.returncode != 0:
        row.text = (f"not measured: {script.name} exited with code {proc.returncode}: "
                    f"{_last_line(proc.stderr)}")
        return row
    try:
        http, inproc = float(result["http_images_per_s"]), float(result["inprocess_images_per_s"])
        ratio = float(result.get("ratio") or http / inproc)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        row.text = f"not measured: unexpected JSON from {script.name} ({_error(exc)})"
        return row
    ok = ratio >= HTTP_GOAL
    row.cells.update({"cnn": _fmt(http, "img/s"), "ours/best": _fmt(ratio, "x"),
                      "goal": f">={HTTP_GOAL:g}x", "met NCHW/best": _yes(ok)})
    note = f"in-process {inproc:,.0f} img/s; 2 workers, 8 clients"
    if result.get("format"):
        note += f", {result['format']} bodies"
    if result.get("non_2xx"):
        note += f"; {result['non_2xx']} non-2xx answers"
    row.notes.append(note)
    row.figures = {"unit": "img/s", "cnn": http, "inprocess": inproc, "ratio": ratio,
                   "goal": f">={HTTP_GOAL:g}x", "met": ok, "serve_json": result}
    return row


# -- the table


def format_table(rows):
    head = f"{'target':<{LABEL_WIDTH}}" + "".join(f" {name:>{w}}" for name, w in COLUMNS) + \
        "  notes"
    lines = [head, "-" * len(head)]
    for row in rows:
        line = f"{row.label:<{LABEL_WIDTH}}"
        if row.text:
            line += f" {row.text}"
        else:
            line += "".join(f" {row.cells.get(name, '-'):>{w}}" for name, w in COLUMNS)
            if row.notes:
                line += "  " + "; ".join(row.notes)
        lines.append(line)
    return "\n".join(lines)


def _versions():
    import cnn
    return {"cnn": cnn.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "torch": package_version("torch"), "onnxruntime": package_version("onnxruntime"),
            "onnx": package_version("onnx")}


def run_all(threads, *, quick=False, skip=(), steps=None, repeat=None, accuracy_epochs=None,
            data_dir=None, json_path=None, serve=None, http_requests=None, http_seconds=None,
            http_format=None, out=None):
    """Every target in one table (see the module docstring). Returns the rows."""
    out = out or sys.stdout
    skip = set(skip)
    if quick:
        skip |= {"accuracy", "http"}
    steps = steps or (5 if quick else 40)
    repeat = repeat or (3 if quick else 30)
    min_time = 0.02 if quick else 1.0
    rounds, per_round = (2, 2) if quick else (7, 3)
    if accuracy_epochs is None:
        accuracy_epochs = 1
    if accuracy_epochs <= 0:
        skip.add("accuracy")
    versions = _versions()
    have_torch = versions["torch"] is not None
    have_ort = versions["onnxruntime"] is not None and versions["onnx"] is not None
    print(machine_line(threads), file=out, flush=True)
    load_start = _load_average()
    rows = {}
    started = time.perf_counter()

    def measure(key, label, group, fn):
        """rows[key] = fn() (a Row or a list of rows), or a row saying why not."""
        if group in skip:
            rows[key] = [Row(group, lab, text="skipped (--skip)" if not (quick and group in
                                                                          ("accuracy", "http"))
                             else "skipped (--quick)") for lab in label]
            return
        _log(f"{', '.join(label)} ... ({time.perf_counter() - started:.0f} s so far)")
        try:
            result = fn()
            rows[key] = result if isinstance(result, list) else [result]
        except Exception as exc:
            rows[key] = [Row(group, lab, text=f"error: {_error(exc)}") for lab in label]

    for arch in ("convnet", "lenet5"):
        measure(f"train-{arch}", [f"{arch} train epoch (s)"], "train",
                lambda arch=arch: row_train(arch, threads, steps, have_torch))
    for arch in ("convnet", "lenet5"):
        want_b64, want_b1 = "infer" not in skip, "latency" not in skip
        labels = [f"{arch} infer b64 (img/s)", f"{arch} infer b1 (ms)"]
        if want_b64 or want_b1:
            measure(f"infer-{arch}", [lab for lab, w in zip(labels, (want_b64, want_b1)) if w],
                    "infer" if want_b64 else "latency",
                    lambda arch=arch, a=want_b64, b=want_b1: rows_infer(
                        arch, threads, repeat, min_time, have_torch, have_ort, a, b))
        for lab, w, group in zip(labels, (want_b64, want_b1), ("infer", "latency")):
            if not w:
                rows.setdefault(f"skip-{lab}", [Row(group, lab, text="skipped (--skip)")])
    measure("scaling-conv", ["conv fwd+bwd 2 vs 1 thread"], "scaling",
            lambda: row_scaling_conv(rounds, per_round))
    measure("scaling-step", ["convnet step 2 vs 1 thread"], "scaling",
            lambda: row_scaling_step(rounds, per_round))

    with tempfile.TemporaryDirectory(prefix="cnn-bench-") as tmp:
        run = {}

        def memory():
            run.update(run_train_child(threads, Path(tmp) / "m.npz", data_dir))
            return row_memory(run)
        measure("memory", ["peak RSS convnet training (MiB)"], "memory", memory)

        def accuracy():
            ours = None
            if accuracy_epochs == 1 and run.get("returncode") == 0 and run.get("test_acc"):
                ours = {"test_acc": run["test_acc"], "seconds": None,
                        "how": "cnn figure from the memory row's cnn.train run"}
            return row_accuracy(accuracy_epochs, threads, data_dir, have_torch, ours)
        label = f"convnet accuracy, {accuracy_epochs} epoch{'s' * (accuracy_epochs != 1)}"
        measure("accuracy", [label], "accuracy", accuracy)

        model = Path(tmp) / "m.npz"
        measure("http", ["HTTP b64 / in-process"], "http", lambda: row_http(
            serve, model if run.get("returncode") == 0 and model.is_file() else None,
            http_requests or 200, http_seconds or 20, fmt=http_format))

    order = ["train-convnet", "train-lenet5", "accuracy"]
    table = [r for key in order for r in rows.get(key, [])]
    infer = [r for key in ("infer-convnet", "infer-lenet5") for r in rows.get(key, [])]
    infer += [r for key, rs in rows.items() if key.startswith("skip-") for r in rs]
    rank = {f"{a} infer {k}": i for i, (k, a) in enumerate(
        (k, a) for k in ("b64 (img/s)", "b1 (ms)") for a in ("convnet", "lenet5"))}
    table += sorted(infer, key=lambda r: rank.get(r.label, 99))
    table += [r for key in ("scaling-conv", "scaling-step", "http", "memory")
              for r in rows.get(key, [])]

    load = (load_start, _load_average())
    print(format_table(table), file=out)
    print(file=out)
    for line in footnotes(threads, steps, repeat, min_time, rounds, per_round, versions,
                          table, quick, load):
        print(line, file=out)
    out.flush()
    if json_path:
        payload = {"machine": machine_line(threads), "threads": threads, "versions": versions,
                   "quick": quick, "steps": steps, "repeat": repeat,
                   "load_average_1min": {"start": load[0], "end": load[1]},
                   "rows": [r.as_dict() for r in table]}
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        print(f"figures written to {json_path}", file=out)
    return table


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def footnotes(threads, steps, repeat, min_time, rounds, per_round, versions, rows, quick,
              load=(None, None)):
    exports = {r.figures.get("onnx_export") for r in rows if r.figures.get("onnx_export")}
    lines = []
    if load[0] is not None:
        lines.append(
            f"Load average (1 min): {load[0]:g} at the start, {load[1]:g} at the end, on "
            f"{os.cpu_count()} cores. Other work on the machine makes every figure noisy "
            f"(PyTorch's spinning OpenMP threads suffer most); rerun on a quiet machine "
            f"before quoting.")
    lines += [
        "How: cnn runs in this process (Cython backend, float32, "
        f"{threads} threads); PyTorch and ONNX Runtime run in child processes with the "
        "caller's environment and the same thread count.",
        "  ratio columns = ours / theirs in the row's unit (seconds, img/s, ms): below 1 is "
        "better for times, above 1 for img/s; goals are on ours/best, where best = PyTorch's "
        "better of NCHW and channels_last (torch-cl); met = vs NCHW / vs best.",
        f"  train epoch: median of {steps} SGD steps on random batches of 64 x "
        f"{(EPOCH_IMAGES + 63) // 64} steps; goal convnet faster than PyTorch, lenet5 at "
        f"most 0.8x its time.",
        "  accuracy: convnet with `python -m cnn.train`'s defaults (Adam lr 1e-3, per-step "
        "cosine, batch 64, 10% validation split, seed 0) on Fashion-MNIST, in cnn and in "
        "PyTorch (same split, normalisation, initial weights, batch order); test accuracy, "
        "difference in points.",
        f"  inference: median of >= {repeat} calls and >= {min_time:g} s after a warm-up; "
        "cnn model.forward(training=False, need_cache=False); PyTorch eval() + inference_mode(); "
        "ONNX Runtime "
        "intra_op_num_threads="
        f"{threads}, inter_op 1, sequential"
        + (f", model from {'; '.join(sorted(exports))}" if exports else "") + ".",
        f"  scaling: median of {rounds} alternating rounds of {per_round} calls at 1 and at "
        "2 threads; speedup = 1-thread time / 2-thread time.",
        "  HTTP: python benchmarks/serve.py --batches 64 --concurrency 8 --workers 2 --json "
        "(gunicorn on loopback); cnn = /predict images/s, ratio = HTTP / in-process "
        "(model.predict at batch 64 on all cores).",
        "  memory: peak RSS (os.wait4 ru_maxrss) of `python -m cnn.train --arch convnet "
        "--epochs 1` on all 60,000 training images.",
    ]
    if quick:
        lines.append("  --quick: few repeats, no accuracy or HTTP rows: a smoke test, not "
                     "figures to quote.")
    lines.append("versions: " + ", ".join(f"{k} {v or 'not installed'}"
                                         for k, v in versions.items()))
    missing = [name for name in ("torch", "onnxruntime", "onnx") if versions[name] is None]
    for name in missing:
        lines.append(missing_hint(name))
    if missing:
        lines.append(f"  all comparison packages at once: {INSTALL_HINT}")
    return lines


def run_train(threads, batch, sample_steps, full_epoch, archs, out=None):
    out = out or sys.stdout
    print(machine_line(threads), file=out)
    steps_per_epoch = (EPOCH_IMAGES + batch - 1) // batch
    how = "timed whole" if full_epoch else f"median of {sample_steps} steps x {steps_per_epoch}"
    print(f"one training epoch: {EPOCH_IMAGES:,} images, batch {batch}, float32, SGD; "
          f"seconds ({how})", file=out)
    torch_version = package_version("torch")   # found, not imported: it runs in children
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
    print(f"torch: {torch_version or 'not installed; pip install torch==2.13.0 to compare'}; "
          f"torch-cl is channels_last; ratios above 1 mean cython is faster", file=out)


SUBCOMMANDS = ("all", "kernels", "train")


def _skip_list(text):
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in ROW_GROUPS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown row group(s) {', '.join(bad)}; choose from {', '.join(ROW_GROUPS)}")
    return names


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m cnn.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("all", help="every speed target in one table (the default)")
    a.add_argument("--threads", type=int, default=None,
                   help="threads for cnn, PyTorch and ONNX Runtime (default: CNN_NUM_THREADS "
                        "or all cores)")
    a.add_argument("--quick", action="store_true",
                   help="few repeats, no accuracy or HTTP rows (a smoke test)")
    a.add_argument("--skip", type=_skip_list, default=[], metavar="ROWS",
                   help=f"comma-separated row groups to leave out: {','.join(ROW_GROUPS)}")
    a.add_argument("--accuracy-epochs", type=_non_negative_int, default=1, metavar="N",
                   help="epochs of the accuracy comparison (default 1; 0 skips it)")
    a.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST IDX folder (default: CNN_DATA_DIR, else "
                        "/usr/share/datasets/fashion-mnist)")
    a.add_argument("--json", default=None, metavar="PATH", dest="json_path",
                   help="also write every figure to PATH as JSON")
    a.add_argument("--steps", type=int, default=None,
                   help="training steps timed per epoch figure (default 40, --quick 5)")
    a.add_argument("--repeat", type=int, default=None,
                   help="timed calls per inference figure, at least (default 30, --quick 3)")
    a.add_argument("--serve-script", default=None, metavar="PATH",
                   help="the HTTP benchmark to run (default: the checkout's "
                        "benchmarks/serve.py)")
    a.add_argument("--http-requests", type=int, default=200,
                   help="serve.py --requests (default 200)")
    a.add_argument("--http-seconds", type=float, default=20,
                   help="serve.py --seconds (default 20)")
    a.add_argument("--http-format", default=None, metavar="FORMATS",
                   help="serve.py --format: png, npy or png,npy (default: serve.py's, png)")
    a.add_argument("--coretype", action="append", default=None, metavar="NAME",
                   help="rerun under OPENBLAS_CORETYPE=NAME (repeatable)")
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
    return parser


def normalize_argv(argv):
    """No subcommand means ``all``: ``python -m cnn.bench --quick`` is
    ``python -m cnn.bench all --quick``."""
    argv = list(argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv.insert(0, "all")
    return argv


def main(argv=None):
    argv = normalize_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    threads = resolve_threads(args.threads)
    if args.coretype:
        for name in args.coretype:
            if name.lower().startswith("skylakex") and not _has_avx512():
                print(f"skipping OPENBLAS_CORETYPE={name}: this CPU has no AVX-512",
                      flush=True)
                continue
            env = dict(os.environ, OPENBLAS_CORETYPE=name)
            rest = argv[1:]
            cmd = [sys.executable, "-m", "cnn.bench", args.what] + _without_coretype(rest)
            print(f"\n=== OPENBLAS_CORETYPE={name}", flush=True)
            subprocess.run(cmd, env=env, check=True)
        return 0
    if args.what == "kernels":
        run_kernels(args.dtype, threads, args.repeat)
    elif args.what == "train":
        run_train(threads, args.batch_size, args.steps, args.full_epoch,
                  args.arch or ["lenet5", "convnet"])
    else:
        run_all(threads, quick=args.quick, skip=args.skip, steps=args.steps,
                repeat=args.repeat, accuracy_epochs=args.accuracy_epochs,
                data_dir=args.data_dir, json_path=args.json_path, serve=args.serve_script,
                http_requests=args.http_requests, http_seconds=args.http_seconds,
                http_format=args.http_format)
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
