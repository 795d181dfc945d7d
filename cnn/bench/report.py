"""The one table of ``python -m cnn.bench``: its rows, columns, the machine
line above it and the footnotes below (how each figure was made, the versions,
how to install a missing comparison package).

A row is data (``Row``) until ``format_table`` lays it out, so the same rows
become the ``--json`` payload. Nothing here measures anything.
"""
import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, field

import numpy as np

from cnn.bench.machine import variant_line
from cnn.bench.workloads import EPOCH_IMAGES

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


def package_versions():
    """{package: version or None} of cnn, its runtime and the comparison packages."""
    import cnn
    return {"cnn": cnn.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "torch": package_version("torch"), "onnxruntime": package_version("onnxruntime"),
            "onnx": package_version("onnx")}


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
    """The line above the table: the CPU, the threads, the environment that
    changes the figures, and the kernels' build that ran (cnn.bench.machine)."""
    model = cpu_model()
    coretype = os.environ.get("OPENBLAS_CORETYPE", "unset (OpenBLAS detects)")
    return (f"machine: {model}, {os.cpu_count()} cores; threads={threads}; "
            f"OPENBLAS_CORETYPE={coretype}; OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; numpy {np.__version__}; "
            f"python {platform.python_version()}; {variant_line()}")


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------- rows

COLUMNS = (("cnn", 10), ("% peak", 6), ("torch", 10), ("torch-cl", 10), ("onnxrt", 10),
           ("ours/best", 10), ("ours/NCHW", 10), ("ours/ORT", 9), ("goal", 20),
           ("met NCHW/best", 14), ("met ORT", 7))
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
                "met_ort": self.cells.get("met ORT"), "notes": self.notes,
                "text": self.text or None}


def error_text(exc):
    """An exception as one table cell: its type and message, at most 300 characters."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def format_figure(value, unit):
    """A figure as the table shows it in ``unit``; "-" for None."""
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
    if unit == "min":
        return f"{value:.1f}"
    return f"{value:g}"


def _meets(ratio, goal):
    op, bound = goal
    if ratio is None:
        return None
    return {"<": ratio < bound, "<=": ratio <= bound, ">=": ratio >= bound,
            ">": ratio > bound}[op]


def yes(flag):
    """A met/not met cell: yes, no, or "-" when unknown (None)."""
    return "-" if flag is None else ("yes" if flag else "no")


def _goal_text(goal):
    op, bound = goal
    return f"{op}{bound:g}x"


def compare_row(group, label, unit, ours, theirs, goal, higher_is_better, ort_goal=None,
                ort_missing="onnxruntime not installed"):
    """A row comparing ``ours`` with the figures in ``theirs`` (column -> float, or
    None when the package is missing, or an ``error: ...`` string). Ratios are
    ours / theirs in the row's unit; the goal is on the ratio to PyTorch's best
    of NCHW and channels_last, and the row also says whether it holds against
    NCHW alone. ``ort_goal``, when given, is a second goal on the ratio to ONNX
    Runtime's figure of the same run (issue 13), judged in the "met ORT"
    column; ``ort_missing`` says why it cannot be judged when ONNX Runtime's
    figure is None."""
    row = Row(group, label)
    row.figures = {"unit": unit, "cnn": ours}
    row.cells["cnn"] = format_figure(ours, unit)
    numbers = {}
    for col in COMPARED:
        value = theirs.get(col, "n/a")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[col] = float(value)
            row.cells[col] = format_figure(value, unit)
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
    row.cells["ours/best"] = format_figure(ratio["best"], "x")
    row.cells["ours/NCHW"] = format_figure(ratio["NCHW"], "x")
    row.cells["ours/ORT"] = format_figure(ratio["ORT"], "x")
    row.cells["goal"] = _goal_text(goal)
    met_nchw, met_best = _meets(ratio["NCHW"], goal), _meets(ratio["best"], goal)
    row.cells["met NCHW/best"] = f"{yes(met_nchw)}/{yes(met_best)}"
    if best is not None and len(torch_figs) == 2:
        row.notes.append("best=" + ("torch-cl" if numbers["torch-cl"] == best else "torch"))
    row.figures.update(torch_best=best, ratio_vs_best=ratio["best"],
                       ratio_vs_nchw=ratio["NCHW"], ratio_vs_onnxrt=ratio["ORT"],
                       goal=_goal_text(goal), met_vs_best=met_best, met_vs_nchw=met_nchw)
    if ort_goal is not None:
        met_ort = _meets(ratio["ORT"], ort_goal)
        row.cells["goal"] = f"torch{_goal_text(goal)}; ort{_goal_text(ort_goal)}"
        row.cells["met ORT"] = yes(met_ort)
        status = None
        if theirs.get("onnxrt") is None:
            status = f"n/a ({ort_missing})"
            row.cells["met ORT"] = "n/a"
            row.notes.append(f"ORT goal {status}")
        row.figures.update(goal_onnxrt=_goal_text(ort_goal), met_vs_onnxrt=met_ort,
                           goal_onnxrt_status=status)
    return row


def add_peak(row, gflops, peak, onnxrt_gflops=None):
    """Put a row's achieved GFLOP/s and its share of the machine's peak (both
    None when unknown) in its "% peak" cell and its figures."""
    from cnn.bench.machine import percent_of_peak
    row.cells["% peak"] = percent_of_peak(gflops, peak)
    row.figures.update(gflops=gflops, percent_of_peak=100 * gflops / peak
                       if gflops and peak else None)
    if onnxrt_gflops:
        row.figures.update(onnxrt_gflops=onnxrt_gflops, onnxrt_percent_of_peak=100 *
                           onnxrt_gflops / peak if peak else None)
        if peak:
            row.notes.append(f"ORT {percent_of_peak(onnxrt_gflops, peak)} of peak")
    return row


# ------------------------------------------------------------------ table


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


def footnotes(threads, steps, repeat, min_time, rounds, per_round, versions, rows, quick,
              load=(None, None), peak=None, tta=None):
    """The lines below the table. ``peak``: the SGEMM GFLOP/s of the run (None
    when not measured); ``tta``: the time-to-accuracy row's (recipe, goal
    minutes, accuracy)."""
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
        "better of NCHW and channels_last (torch-cl); met = vs NCHW / vs best. Inference "
        "rows have a second goal, on ours/ORT (ONNX Runtime in the same run): met ORT.",
        (f"  % peak = the row's GFLOP/s over {peak:.0f} GFLOP/s, a BLAS SGEMM (NumPy matmul, "
         f"float32 1024^3, {threads} threads, median of 5, measured at the start): a practical "
         "peak, not the FMA units' theoretical one. FLOPs from the layer shapes (2 per "
         "multiply-add of conv and dense layers, direct algorithm); a train step counts "
         "forward, weight and input gradients (~3x forward)." if peak else
         "  % peak: not measured (the SGEMM peak measurement failed)."),
        f"  train epoch: median of {steps} SGD steps on random batches of 64 x "
        f"{(EPOCH_IMAGES + 63) // 64} steps; goal convnet faster than PyTorch, lenet5 at "
        f"most 0.8x its time.",
        "  accuracy: convnet with `python -m cnn.train`'s defaults (Adam lr 1e-3, per-step "
        "cosine, batch 64, 10% validation split, seed 0) on Fashion-MNIST, in cnn and in "
        "PyTorch (same split, normalisation, initial weights, batch order); test accuracy, "
        "difference in points.",
        f"  inference: median of >= {repeat} calls and >= {min_time:g} s after a warm-up; "
        "cnn model.compile() (the inference plan, cnn.plan); PyTorch eval() + "
        "inference_mode(); "
        "ONNX Runtime "
        "intra_op_num_threads="
        f"{threads}, inter_op 1, sequential"
        + (f", model from {'; '.join(sorted(exports))}" if exports else "") + ".",
        f"  scaling: median of {rounds} alternating rounds of {per_round} calls at 1 and at "
        "2 threads; speedup = 1-thread time / 2-thread time.",
        "  HTTP: python -m cnn.bench.serve --batches 64 --concurrency 8 --workers 2 --json "
        "(gunicorn on loopback); cnn = /predict images/s, ratio = HTTP / in-process "
        "(model.predict at batch 64 on all cores).",
        "  memory: peak RSS (os.wait4 ru_maxrss) of `python -m cnn.train --arch convnet "
        "--epochs 1` on all 60,000 training images.",
    ]
    if tta:
        recipe, goal_minutes, accuracy = tta
        lines.append(
            f"  time to accuracy: `python -m cnn.train {recipe}` on Fashion-MNIST, "
            f"{threads} threads; minutes = the epochs' training time (history JSON) up to the "
            f"first test accuracy >= {100 * accuracy:g}%. cnn.train measures test accuracy "
            f"only after the last epoch, so the figure is the whole run's training time when "
            f"it ends at or above {100 * accuracy:g}% (the note gives the first epoch whose "
            f"validation accuracy did); goal <= {goal_minutes:g} min.")
    if quick:
        lines.append("  --quick: few repeats, no accuracy, time-to-accuracy or HTTP rows: a "
                     "smoke test, not figures to quote.")
    lines.append("versions: " + ", ".join(f"{k} {v or 'not installed'}"
                                         for k, v in versions.items()))
    missing = [name for name in ("torch", "onnxruntime", "onnx") if versions[name] is None]
    for name in missing:
        lines.append(missing_hint(name))
    if missing:
        lines.append(f"  all comparison packages at once: {INSTALL_HINT}")
    return lines
