"""``python -m cnn.bench [all]``: one function per row of the table, and
``run_all``, which measures the machine's SGEMM peak (cnn.bench.machine),
then every row, and prints the table.

Each row is measured on its own: a failure becomes ``error: ...`` in that row
and the others still run. The goal of every row is a named constant next to
its function. PyTorch and ONNX Runtime run in child processes
(cnn.bench.peers); the HTTP row runs ``python -m cnn.bench.serve`` and the
memory and time-to-accuracy rows ``python -m cnn.train``, each in a child
process too.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cnn._threads import available_cores
from cnn.backends import get_backend
from cnn.bench.flops import arch_flops
from cnn.bench.machine import cpu_features, kernel_variant, sgemm_gflops
from cnn.bench.peers import child_call, child_env, last_line, torch_epoch_seconds
from cnn.bench.report import (
    Row,
    add_peak,
    compare_row,
    error_text,
    footnotes,
    format_figure,
    format_table,
    load_average,
    machine_line,
    package_versions,
    yes,
)
from cnn.bench.timing import epoch_seconds, interleaved_ms, median_ms
from cnn.bench.workloads import EPOCH_IMAGES, cnn_accuracy, train_step_cnn
from cnn.io import atomic_write
from cnn.run_files import sidecar

ROW_GROUPS = ("train", "accuracy", "tta", "infer", "latency", "scaling", "http", "memory")


def _log(message):
    print(f"[cnn.bench] {message}", file=sys.stderr, flush=True)


def _safe(fn):
    """fn() or an 'error: ...' string."""
    try:
        return fn()
    except Exception as exc:  # one failing comparison must not lose the row
        return f"error: {error_text(exc)}"


# -- training epoch


TRAIN_GOALS = {"convnet": ("<", 1.0), "lenet5": ("<=", 0.8)}


def row_train(arch, threads, steps, have_torch, batch=64, peak=None):
    """Row: one epoch (60,000 images) as the median step time x the step count;
    its GFLOP/s as a share of ``peak`` (the SGEMM GFLOP/s, None: unknown)."""
    steps_per_epoch = (EPOCH_IMAGES + batch - 1) // batch
    ours = epoch_seconds(train_step_cnn(arch, "cython", threads, batch), steps_per_epoch,
                         steps, False)
    theirs = {"torch": None, "torch-cl": None, "onnxrt": "-"}
    if have_torch:
        for col, cl in (("torch", False), ("torch-cl", True)):
            theirs[col] = _safe(lambda cl=cl: torch_epoch_seconds(arch, threads, batch, steps,
                                                                   False, cl))
    row = compare_row("train", f"{arch} train epoch (s)", "s", ours, theirs,
                      TRAIN_GOALS[arch], higher_is_better=False)
    return add_peak(row, arch_flops(arch)[1] * EPOCH_IMAGES / ours / 1e9, peak)


# -- inference


# On the ratio to PyTorch's best layout (the earlier speed issue's goals) ...
INFER_GOALS = {"convnet": (">=", 3.0), "lenet5": (">=", 2.0)}
LATENCY_GOAL = ("<", 1.0)
# ... and on the ratio to ONNX Runtime's figure of the same run (issue 13).
INFER_ORT_GOALS = {"convnet": (">=", 1.0), "lenet5": (">=", 0.8)}
LATENCY_ORT_GOALS = {"convnet": ("<=", 1.5), "lenet5": ("<=", 1.5)}


def rows_infer(arch, threads, repeat, min_time, have_torch, have_ort, batch=True,
               latency=True, peak=None, ort_missing="onnxruntime not installed"):
    """Rows: images/s at batch 64 and batch-1 latency of ``arch``: ours
    (the inference plan ``model.compile()``, cnn.plan, which equals
    model.forward(training=False); Cython backend) here, PyTorch's and ONNX
    Runtime's (a prepared session, as the plan is) in one child process. Each row
    has a goal against PyTorch and one against ONNX Runtime (``ort_missing``: why
    there is no ORT figure when ``have_ort`` is false), and its GFLOP/s as a share
    of ``peak``."""
    from cnn.architectures import build_architecture
    batches = ([64] if batch else []) + ([1] if latency else [])
    model = build_architecture(arch).build(seed=0, backend="cython", threads=threads)
    plan = model.compile()
    rng = np.random.default_rng(0)
    ours = {}
    for b in batches:
        x = rng.standard_normal((b, 1, 28, 28)).astype(np.float32)
        ours[b] = median_ms(lambda x=x: plan(x), repeat, min_time)
    theirs = {b: {"torch": None, "torch-cl": None, "onnxrt": None} for b in batches}
    export = None
    if have_torch or have_ort:
        layouts = ["torch", "torch-cl"] if have_torch else []
        try:
            child = child_call("_infer_child", dict(
                arch=arch, threads=threads, repeat=repeat, min_time=min_time, layouts=layouts,
                ort=bool(have_ort), batches=batches), preload=("torch",) if have_torch else ())
        except Exception as exc:
            child = {col: {"error": error_text(exc)} for col in layouts + ["onnxrt"] * have_ort}
        export = child.pop("onnx_export", None)
        for col, figs in child.items():
            for b in batches:
                theirs[b][col] = f"error: {figs['error']}" if "error" in figs else \
                    figs[str(b)]
    rows = []
    flops = arch_flops(arch)[0]

    def gflops(b, ms):
        return b * flops / ms / 1e6 if isinstance(ms, float) else None
    for b in batches:
        if b == 64:
            img_s = {c: 64e3 / v if isinstance(v, float) else v for c, v in theirs[64].items()}
            row = compare_row("infer", f"{arch} infer b64 (img/s)", "img/s", 64e3 / ours[64],
                              img_s, INFER_GOALS[arch], higher_is_better=True,
                              ort_goal=INFER_ORT_GOALS[arch], ort_missing=ort_missing)
        else:
            row = compare_row("latency", f"{arch} infer b1 (ms)", "ms", ours[1], theirs[1],
                              LATENCY_GOAL, higher_is_better=False,
                              ort_goal=LATENCY_ORT_GOALS[arch], ort_missing=ort_missing)
        rows.append(add_peak(row, gflops(b, ours[b]), peak, gflops(b, theirs[b]["onnxrt"])))
    for row in rows:
        row.figures["onnx_export"] = export
    return rows


# -- thread scaling


SCALING_GOAL = 1.7


def _scaling_row(label, make, rounds, per_round):
    row = Row("scaling", label)
    cores = available_cores()
    if cores < 2:
        row.text = f"skipped: this machine has {cores} core (2 threads need 2 cores)"
        return row
    one, two = interleaved_ms([make(1), make(2)], rounds, per_round)
    speedup = one / two
    ok = speedup >= SCALING_GOAL
    row.cells.update({"cnn": format_figure(speedup, "x"), "goal": f">={SCALING_GOAL:g}x",
                      "met NCHW/best": yes(ok)})
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
                        lambda threads: train_step_cnn("convnet", "cython", threads, 64),
                        rounds, per_round)


# -- accuracy


ACCURACY_POINTS = 0.5


def row_accuracy(epochs, threads, data_dir, have_torch, ours=None):
    """Row: test accuracy of convnet in cnn and in PyTorch after ``epochs`` epochs.
    ``ours`` ({"test_acc": ...}) reuses a finished run of the same recipe."""
    row = Row("accuracy", f"convnet accuracy, {epochs} epoch{'s' * (epochs != 1)}")
    if ours is None:
        ours = cnn_accuracy(epochs, threads, data_dir)
    row.figures = {"unit": "accuracy", "epochs": epochs, "cnn": ours["test_acc"],
                   "cnn_seconds": ours.get("seconds"), "goal": f"|diff|<={ACCURACY_POINTS}pt"}
    row.cells.update({"cnn": format_figure(ours["test_acc"], "%"),
                      "goal": f"|d|<={ACCURACY_POINTS}pt", "torch-cl": "-", "onnxrt": "-"})
    if ours.get("how"):
        row.notes.append(ours["how"])
    if not have_torch:
        row.cells.update({"torch": "n/a", "met NCHW/best": "-"})
        return row
    try:
        theirs = child_call("_torch_accuracy_child", dict(
            epochs=epochs, threads=threads, data_dir=data_dir), timeout=1800 * max(1, epochs))
    except Exception as exc:
        row.cells.update({"torch": "error", "met NCHW/best": "-"})
        row.notes.append(f"torch error: {error_text(exc)}")
        row.figures["torch"] = f"error: {error_text(exc)}"
        return row
    diff = 100 * (ours["test_acc"] - theirs["test_acc"])
    ok = abs(diff) <= ACCURACY_POINTS
    row.cells.update({"torch": format_figure(theirs["test_acc"], "%"),
                      "ours/best": f"{diff:+.2f}pt", "ours/NCHW": f"{diff:+.2f}pt",
                      "met NCHW/best": f"{yes(ok)}/{yes(ok)}"})
    row.figures.update(torch=theirs["test_acc"], torch_seconds=theirs["seconds"],
                       diff_points=diff, met=ok)
    return row


# -- memory


MEMORY_LIMIT_MIB = 1024


def run_train_child(threads, out_path, data_dir=None, epochs=1, timeout=1800, recipe=None):
    """``python -m cnn.train --arch convnet`` (or the flags of ``recipe``) on all
    of the data in a child process: {"peak_rss_mib", "test_acc", "seconds",
    "returncode", "timed_out", "output"}. The peak resident memory is the
    child's own (os.wait4), so children this process ran before (PyTorch) do
    not count."""
    import shlex
    import threading
    flags = shlex.split(recipe) if recipe else ["--arch", "convnet", "--epochs", str(epochs)]
    cmd = [sys.executable, "-m", "cnn.train", *flags,
           "--out", str(out_path), "--progress", "lines", "--backend", "cython",
           "--threads", str(threads)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    # The child runs in the output's folder, so it must import the cnn this
    # process runs (a checkout, or another install than the one on sys.path).
    import cnn
    env = os.environ.copy()
    here = os.path.dirname(os.path.dirname(os.path.abspath(cnn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                  else []))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.abspath(out_path)), env=env)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        proc.kill()
    timer = threading.Timer(timeout, kill)
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
            "timed_out": timed_out.is_set(), "output": output}


def row_memory(run):
    """Row: peak RSS of the full-data training child ``run`` (run_train_child)."""
    row = Row("memory", "peak RSS convnet training (MiB)")
    if run["returncode"] != 0:
        row.text = (f"error: cnn.train exited with code {run['returncode']}: "
                    f"{last_line(run['output'])}")
        return row
    mib = run["peak_rss_mib"]
    ok = mib < MEMORY_LIMIT_MIB
    row.cells.update({"cnn": format_figure(mib, "MiB"), "goal": f"<{MEMORY_LIMIT_MIB} MiB",
                      "met NCHW/best": yes(ok)})
    row.notes.append(f"1 epoch, 60k images, {run['seconds']:.0f} s"
                     + (f", test acc {100 * run['test_acc']:.2f}%" if run["test_acc"] else ""))
    row.figures = {"unit": "MiB", "cnn": mib, "goal": f"<{MEMORY_LIMIT_MIB}", "met": ok,
                   "test_acc": run["test_acc"], "seconds": run["seconds"]}
    return row


# -- time to accuracy


# README's recipe for 93% (its Training section); replace it with a faster one
# once one is measured to reach 93%.
TTA_RECIPE = ("--arch convnet_deep --augment flip --epochs 12 --optimizer adamw --lr 0.002 "
              "--weight-decay 0.05")
TTA_ACCURACY = 0.93
TTA_GOAL_MINUTES = 5.0
TTA_TIMEOUT_MINUTES = 25    # the recipe took 17 minutes on 2 cores
TTA_LABEL = f"time to {100 * TTA_ACCURACY:g}% test acc (min)"
EPOCH_LINE = re.compile(r"Epoch (\d+)/\d+ - ([0-9.]+)s .*?val_acc: ([0-9.]+)")


def time_to_accuracy(history_json, accuracy=TTA_ACCURACY):
    """What a finished ``cnn.train`` run's history JSON (cnn.history) says about
    reaching ``accuracy``: {"test_acc", "epochs", "train_minutes",
    "reached", "minutes", "val_epoch", "val_minutes"}.

    The history has validation accuracy per epoch but test accuracy only in the
    final summary, so the test accuracy is known to have reached ``accuracy``
    after the whole run's training time ("minutes", None when it did not);
    "val_epoch"/"val_minutes" are where the validation accuracy first did.
    """
    record = json.loads(Path(history_json).read_text())
    history, summary = record["history"], record["summary"]
    test_acc = summary["test_accuracy"]
    elapsed, val_epoch, val_minutes = 0.0, None, None
    for h in history:
        elapsed += h["time"]
        if val_epoch is None and h.get("val_acc") is not None and h["val_acc"] >= accuracy:
            val_epoch, val_minutes = h["epoch"], elapsed / 60
    reached = test_acc is not None and test_acc >= accuracy
    return {"test_acc": test_acc, "epochs": len(history), "train_minutes": elapsed / 60,
            "reached": reached, "minutes": elapsed / 60 if reached else None,
            "val_epoch": val_epoch, "val_minutes": val_minutes}


def row_tta(run, history_json, recipe=TTA_RECIPE):
    """Row: minutes of training until the test accuracy reached TTA_ACCURACY,
    from ``run`` (run_train_child with ``recipe``) and its history JSON."""
    row = Row("tta", TTA_LABEL)
    goal = f"<={TTA_GOAL_MINUTES:g} min"
    if run["timed_out"]:
        epochs = EPOCH_LINE.findall(run["output"])
        done = (f": {len(epochs)} epochs done, val acc {float(epochs[-1][2]):.4f}"
                if epochs else "")
        row.text = f"not reached: cnn.train stopped after {TTA_TIMEOUT_MINUTES} min{done}"
        row.figures = {"unit": "min", "goal": goal, "met": False, "recipe": recipe,
                       "timeout_minutes": TTA_TIMEOUT_MINUTES}
        return row
    if run["returncode"] != 0:
        row.text = (f"error: cnn.train exited with code {run['returncode']}: "
                    f"{last_line(run['output'])}")
        return row
    found = time_to_accuracy(history_json)
    ok = found["reached"] and found["minutes"] <= TTA_GOAL_MINUTES
    row.cells.update({
        "cnn": format_figure(found["minutes"], "min") if found["reached"] else
        ">" + format_figure(found["train_minutes"], "min"),
        "goal": goal, "met NCHW/best": yes(ok)})
    row.notes.append(f"test acc {found['test_acc']:.4f} after {found['epochs']} epochs "
                     f"({found['train_minutes']:.1f} min training, {run['seconds'] / 60:.1f} "
                     f"min in all)")
    if found["val_epoch"] is not None:
        row.notes.append(f"val acc >= {100 * TTA_ACCURACY:g}% first after epoch "
                         f"{found['val_epoch']} ({found['val_minutes']:.1f} min)")
    row.figures = dict(found, unit="min", cnn=found["minutes"], goal=goal, met=ok,
                       recipe=recipe, seconds_in_all=run["seconds"])
    return row


# -- HTTP


HTTP_GOAL = 0.7
# The HTTP benchmark is part of the package, so an installed cnn measures this
# row without a checkout.
SERVE_MODULE = "cnn.bench.serve"


def row_http(script=None, model=None, requests=200, seconds=20, timeout=900, fmt=None):
    """Row: `python -m cnn.bench.serve --batches 64 --concurrency 8 --workers 2
    --json`'s HTTP images/s against its in-process images/s; ``script`` runs that
    file instead. ``not measured: ...`` when the script is missing, fails or has
    no --json."""
    row = Row("http", "HTTP b64 / in-process")
    if script is None:
        base, name = [sys.executable, "-m", SERVE_MODULE], SERVE_MODULE
    else:
        script = Path(script)
        base, name = [sys.executable, str(script)], script.name
        if not script.is_file():
            row.text = f"not measured: {script} not found"
            return row
    env = child_env()
    if script is not None:      # a script of its own may predate --json
        try:
            help_text = subprocess.run(base + ["--help"], env=env, capture_output=True,
                                       text=True, timeout=120).stdout
        except Exception as exc:
            row.text = f"not measured: {name} --help failed: {error_text(exc)}"
            return row
        if "--json" not in help_text:
            row.text = f"not measured: {name} has no --json option yet"
            return row
    cmd = base + ["--batches", "64", "--concurrency", "8", "--workers", "2", "--json",
                  "--requests", str(requests), "--seconds", str(seconds)]
    if model:
        cmd += ["--model", str(model)]
    if fmt:
        cmd += ["--format", str(fmt)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row.text = f"not measured: {name} took more than {timeout} s"
        return row
    try:
        result = json.loads(last_line(proc.stdout))
    except ValueError:
        result = None
    if not isinstance(result, dict):
        if proc.returncode != 0:
            row.text = (f"not measured: {name} exited with code {proc.returncode}: "
                        f"{last_line(proc.stderr) or last_line(proc.stdout)}")
        else:
            row.text = f"not measured: no JSON result on the last line of {name}"
        return row
    if result.get("error"):
        row.text = f"not measured: {name}: {result['error']}"
        return row
    if proc.returncode != 0:
        row.text = (f"not measured: {name} exited with code {proc.returncode}: "
                    f"{last_line(proc.stderr)}")
        return row
    try:
        http, inproc = float(result["http_images_per_s"]), float(result["inprocess_images_per_s"])
        ratio = float(result.get("ratio") or http / inproc)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        row.text = f"not measured: unexpected JSON from {name} ({error_text(exc)})"
        return row
    ok = ratio >= HTTP_GOAL
    row.cells.update({"cnn": format_figure(http, "img/s"), "ours/best": format_figure(ratio, "x"),
                      "goal": f">={HTTP_GOAL:g}x", "met NCHW/best": yes(ok)})
    note = f"in-process {inproc:,.0f} img/s; 2 workers, 8 clients"
    if result.get("format"):
        note += f", {result['format']} bodies"
    if result.get("non_2xx"):
        note += f"; {result['non_2xx']} non-2xx answers"
    row.notes.append(note)
    row.figures = {"unit": "img/s", "cnn": http, "inprocess": inproc, "ratio": ratio,
                   "goal": f">={HTTP_GOAL:g}x", "met": ok, "serve_json": result}
    return row


# The slow rows: --quick leaves them out.
QUICK_SKIPS = {"accuracy", "tta", "http"}


def run_all(threads, *, quick=False, skip=(), steps=None, repeat=None, accuracy_epochs=None,
            data_dir=None, json_path=None, serve=None, http_requests=None, http_seconds=None,
            http_format=None, out=None):
    """Every target in one table (see cnn.bench.cli). Returns the rows."""
    out = out or sys.stdout
    skip = set(skip)
    if quick:
        skip |= QUICK_SKIPS
    steps = steps or (5 if quick else 40)
    repeat = repeat or (3 if quick else 30)
    min_time = 0.02 if quick else 1.0
    rounds, per_round = (2, 2) if quick else (7, 3)
    if accuracy_epochs is None:
        accuracy_epochs = 1
    if accuracy_epochs <= 0:
        skip.add("accuracy")
    versions = package_versions()
    have_torch = versions["torch"] is not None
    have_ort = versions["onnxruntime"] is not None and versions["onnx"] is not None
    ort_missing = " and ".join(f"{name} not installed" for name in ("onnxruntime", "onnx")
                               if versions[name] is None)
    print(machine_line(threads), file=out, flush=True)
    load_start = load_average()
    rows = {}
    started = time.perf_counter()
    # Once, before the rows: the practical float32 peak their "% peak" is of.
    try:
        peak = sgemm_gflops(threads)
    except Exception as exc:
        _log(f"SGEMM peak not measured: {error_text(exc)}")
        peak = None

    def measure(key, label, group, fn):
        """rows[key] = fn() (a Row or a list of rows), or a row saying why not."""
        if group in skip:
            why = "--quick" if quick and group in QUICK_SKIPS else "--skip"
            rows[key] = [Row(group, lab, text=f"skipped ({why})") for lab in label]
            return
        _log(f"{', '.join(label)} ... ({time.perf_counter() - started:.0f} s so far)")
        try:
            result = fn()
            rows[key] = result if isinstance(result, list) else [result]
        except Exception as exc:
            rows[key] = [Row(group, lab, text=f"error: {error_text(exc)}") for lab in label]

    for arch in ("convnet", "lenet5"):
        measure(f"train-{arch}", [f"{arch} train epoch (s)"], "train",
                lambda arch=arch: row_train(arch, threads, steps, have_torch, peak=peak))
    for arch in ("convnet", "lenet5"):
        want_b64, want_b1 = "infer" not in skip, "latency" not in skip
        labels = [f"{arch} infer b64 (img/s)", f"{arch} infer b1 (ms)"]
        if want_b64 or want_b1:
            measure(f"infer-{arch}", [lab for lab, w in zip(labels, (want_b64, want_b1)) if w],
                    "infer" if want_b64 else "latency",
                    lambda arch=arch, a=want_b64, b=want_b1: rows_infer(
                        arch, threads, repeat, min_time, have_torch, have_ort, a, b, peak,
                        ort_missing))
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

        def tta():
            weights = Path(tmp) / "tta.npz"
            run = run_train_child(threads, weights, data_dir, recipe=TTA_RECIPE,
                                  timeout=60 * TTA_TIMEOUT_MINUTES)
            return row_tta(run, sidecar(str(weights), ".history.json"))
        measure("tta", [TTA_LABEL], "tta", tta)

        model = Path(tmp) / "m.npz"
        measure("http", ["HTTP b64 / in-process"], "http", lambda: row_http(
            serve, model if run.get("returncode") == 0 and model.is_file() else None,
            http_requests or 200, http_seconds or 20, fmt=http_format))

    order = ["train-convnet", "train-lenet5", "accuracy", "tta"]
    table = [r for key in order for r in rows.get(key, [])]
    infer = [r for key in ("infer-convnet", "infer-lenet5") for r in rows.get(key, [])]
    infer += [r for key, rs in rows.items() if key.startswith("skip-") for r in rs]
    rank = {f"{a} infer {k}": i for i, (k, a) in enumerate(
        (k, a) for k in ("b64 (img/s)", "b1 (ms)") for a in ("convnet", "lenet5"))}
    table += sorted(infer, key=lambda r: rank.get(r.label, 99))
    table += [r for key in ("scaling-conv", "scaling-step", "http", "memory")
              for r in rows.get(key, [])]

    load = (load_start, load_average())
    print(format_table(table), file=out)
    print(file=out)
    for line in footnotes(threads, steps, repeat, min_time, rounds, per_round, versions,
                          table, quick, load, peak,
                          (TTA_RECIPE, TTA_GOAL_MINUTES, TTA_ACCURACY)):
        print(line, file=out)
    out.flush()
    if json_path:
        payload = {"machine": machine_line(threads), "threads": threads, "versions": versions,
                   "kernels": {"variant": kernel_variant(), "cpu_features": cpu_features()},
                   "peak_gflops": peak, "peak_how": "BLAS SGEMM float32 1024^3 (NumPy matmul)",
                   "quick": quick, "steps": steps, "repeat": repeat,
                   "load_average_1min": {"start": load[0], "end": load[1]},
                   "rows": [r.as_dict() for r in table]}
        text = json.dumps(payload, indent=2, default=str)
        atomic_write(json_path, lambda f: f.write(text.encode()))
        print(f"figures written to {json_path}", file=out)
    return table
