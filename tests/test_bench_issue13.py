"""What issue 13 added to ``python -m cnn.bench``'s table: the ONNX Runtime
goals beside PyTorch's, "% peak", the kernels' build on the machine line and
the time-to-accuracy row.

Fast: fake peer figures, fake training runs and fake history files; nothing
is timed or asserted about this machine's speed.
"""
import json
import platform

import pytest

from cnn.architectures import build_architecture
from cnn.bench import flops, machine, report, targets
from cnn.run_files import sidecar

# -- FLOPs from the layer shapes


def test_lenet5_flops_match_a_hand_count():
    # 2 FLOPs per multiply-add; conv: C_in*KH*KW*C_out*H_out*W_out, dense: D_in*D_out
    conv1 = 1 * 5 * 5 * 6 * 28 * 28        # pad 2 keeps 28x28
    conv2 = 6 * 5 * 5 * 16 * 10 * 10       # 14x14 after pooling, valid 5x5 -> 10x10
    dense = 400 * 120 + 120 * 84 + 84 * 10
    forward = 2 * (conv1 + conv2 + dense)
    assert forward == 833_040
    model = build_architecture("lenet5")
    assert flops.forward_flops(model) == forward
    # forward + weight gradients + input gradients, but not the first layer's
    assert flops.train_flops(model) == 3 * forward - 2 * conv1
    assert flops.train_flops(model, input_grad=True) == 3 * forward
    assert flops.arch_flops("lenet5") == (forward, 3 * forward - 2 * conv1)


def test_flops_follow_the_shapes_not_a_table():
    # convnet: the 112 GFLOP/s at 13,175 img/s is 8.5 MFLOP per image
    assert flops.forward_flops(build_architecture("convnet")) == 2 * (
        1 * 9 * 32 * 28 * 28 + 32 * 9 * 64 * 14 * 14 + 3136 * 128 + 128 * 10)
    small = build_architecture("conv4k3s2-relu-flatten-dense10")   # stride 2: 13x13
    assert flops.forward_flops(small) == 2 * (1 * 9 * 4 * 13 * 13 + 4 * 13 * 13 * 10)


# -- % of peak


@pytest.mark.parametrize("gflops, peak, text", [
    (112.0, 234.0, "48%"), (205.0, 234.0, "88%"), (9.6, 100.0, "10%"), (9.4, 100.0, "9.4%"),
    (0.5, 234.0, "0.2%"),
    (None, 234.0, "-"), (100.0, None, "-"), (0.0, 234.0, "-"),
])
def test_percent_of_peak_text(gflops, peak, text):
    assert machine.percent_of_peak(gflops, peak) == text


def test_add_peak_fills_the_cell_the_figures_and_the_ort_note():
    row = report.add_peak(report.Row("infer", "r"), 117.0, 234.0, onnxrt_gflops=205.0)
    assert row.cells["% peak"] == "50%"
    assert row.figures["gflops"] == 117.0 and row.figures["percent_of_peak"] == 50.0
    assert row.figures["onnxrt_percent_of_peak"] == pytest.approx(87.6, abs=0.1)
    assert row.notes == ["ORT 88% of peak"]
    row = report.add_peak(report.Row("train", "t"), 50.0, None)
    assert row.cells["% peak"] == "-" and row.figures["percent_of_peak"] is None
    assert "% peak" in report.format_table([row]).splitlines()[0]


def test_sgemm_peak_is_a_positive_figure():
    assert machine.sgemm_gflops(1, n=64, repeat=2) > 0


def test_footnote_says_what_the_peak_is():
    versions = {"cnn": "0", "numpy": "2", "python": "3", "torch": "x", "onnxruntime": "x",
                "onnx": "x"}
    lines = report.footnotes(2, 5, 3, 0.1, 2, 2, versions, [], False, peak=200.0)
    text = "\n".join(lines)
    assert "over 200 GFLOP/s, a BLAS SGEMM" in text and "not the FMA units'" in text
    lines = report.footnotes(2, 5, 3, 0.1, 2, 2, versions, [], False, peak=None)
    assert "% peak: not measured" in "\n".join(lines)


# -- both peers' goals


def _infer_rows(monkeypatch, ort_ms, have_ort=True, arch="lenet5"):
    """rows_infer with our figures measured (1 call) and ONNX Runtime's faked."""
    def fake_child(func, kwargs, **_):
        assert func == "_infer_child" and kwargs["ort"] is True
        return {"onnxrt": ort_ms, "onnx_export": "fake export"}
    monkeypatch.setattr(targets, "child_call", fake_child)
    rows = targets.rows_infer(arch, 1, 1, 0.0, False, have_ort, peak=100.0,
                              ort_missing="onnxruntime not installed")
    return {r.group: r for r in rows}


def test_ort_goal_met_when_ort_is_far_slower(monkeypatch):
    rows = _infer_rows(monkeypatch, {"64": 1e6, "1": 1e6})
    for row in rows.values():
        assert row.cells["met ORT"] == "yes" and row.figures["met_vs_onnxrt"] is True
        assert row.cells["met NCHW/best"] == "-/-"          # no torch: the old goal unknown
        assert row.figures["goal_onnxrt_status"] is None
        assert row.figures["onnxrt_gflops"] > 0 and row.cells["% peak"] != "-"
    assert rows["infer"].cells["goal"] == "torch>=2x; ort>=0.8x"
    assert rows["latency"].cells["goal"] == "torch<1x; ort<=1.5x"
    assert rows["infer"].figures["goal_onnxrt"] == ">=0.8x"


def test_ort_goal_not_met_when_ort_is_far_faster(monkeypatch):
    rows = _infer_rows(monkeypatch, {"64": 1e-6, "1": 1e-6}, arch="convnet")
    for row in rows.values():
        assert row.cells["met ORT"] == "no" and row.figures["met_vs_onnxrt"] is False
    assert rows["infer"].cells["goal"] == "torch>=3x; ort>=1x"
    assert rows["latency"].cells["goal"] == "torch<1x; ort<=1.5x"


def test_ort_goal_without_onnxruntime(monkeypatch):
    rows = targets.rows_infer("lenet5", 1, 1, 0.0, False, False, peak=None,
                              ort_missing="onnxruntime not installed")
    for row in rows:
        assert row.cells["onnxrt"] == "n/a" and row.cells["met ORT"] == "n/a"
        assert "ORT goal n/a (onnxruntime not installed)" in row.notes
        assert row.figures["goal_onnxrt_status"] == "n/a (onnxruntime not installed)"
        assert row.figures["met_vs_onnxrt"] is None and row.cells["% peak"] == "-"
        assert row.as_dict()["met_ort"] == "n/a"


def test_ort_error_leaves_the_verdict_unknown():
    row = report.compare_row("latency", "l", "ms", 1.0, {"torch": 2.0, "torch-cl": 0.5,
                                                        "onnxrt": "error: boom"},
                             ("<", 1.0), False, ort_goal=("<=", 1.5))
    assert row.cells["met ORT"] == "-" and row.cells["met NCHW/best"] == "yes/no"
    assert not any(n.startswith("ORT goal") for n in row.notes)


def test_rows_without_an_ort_goal_keep_their_cells():
    row = report.compare_row("train", "t", "s", 1.0, {"torch": 2.0, "torch-cl": None,
                                                     "onnxrt": "-"}, ("<", 1.0), False)
    assert row.cells["goal"] == "<1x" and "met ORT" not in row.cells
    assert "goal_onnxrt" not in row.figures


# -- the kernels' build


def test_variant_line_names_the_build_and_the_cpu():
    line = machine.variant_line("baseline", ["SSE2", "AVX2", "FMA3", "AVX512F", "FOO"],
                                "x86_64")
    assert line == "kernels: baseline (SSE2) build; CPU has sse2 fma3 avx2 avx512f"
    assert machine.variant_line("avx512", ["SSE2"], "x86_64") == \
        "kernels: avx512 build; CPU has sse2"
    assert machine.variant_line("baseline", [], "riscv64") == \
        "kernels: baseline build; CPU has none of the features NumPy reports"


def test_variant_of_this_process_is_on_the_machine_line():
    assert machine.kernel_variant() == "baseline"
    features = machine.cpu_features()
    if platform.machine() in ("x86_64", "AMD64"):
        assert "SSE2" in features
    assert report.machine_line(2).endswith(machine.variant_line())


# -- time to accuracy


def _history(tmp_path, val_accs, test_acc, seconds=60.0, name="tta.npz"):
    weights = str(tmp_path / name)
    history = [{"epoch": i + 1, "loss": 0.3, "acc": 0.9, "val_loss": 0.2, "val_acc": v,
                "lr": 1e-3, "time": seconds, "curve": []} for i, v in enumerate(val_accs)]
    summary = {"test_accuracy": test_acc, "epochs": len(history), "seconds": 999.0}
    path = sidecar(weights, ".history.json")
    with open(path, "w") as f:
        json.dump({"summary": summary, "history": history}, f)
    return path


def _run(**kw):
    return dict({"returncode": 0, "timed_out": False, "seconds": 330.0, "output": ""}, **kw)


def test_time_to_accuracy_reads_the_history(tmp_path):
    path = _history(tmp_path, [0.90, 0.925, 0.931, 0.934], 0.9351, seconds=45.0)
    found = targets.time_to_accuracy(path)
    assert found["reached"] and found["minutes"] == pytest.approx(3.0)
    assert (found["val_epoch"], found["val_minutes"]) == (3, pytest.approx(2.25))
    row = targets.row_tta(_run(), path)
    assert row.cells["cnn"] == "3.0" and row.cells["met NCHW/best"] == "yes"
    assert row.cells["goal"] == "<=5 min"
    assert "test acc 0.9351 after 4 epochs" in row.notes[0]
    assert "first after epoch 3 (2.2 min)" in row.notes[1]
    assert row.figures["recipe"] == targets.TTA_RECIPE


def test_time_to_accuracy_too_slow_or_not_reached(tmp_path):
    slow = _history(tmp_path, [0.92, 0.935], 0.9349, seconds=600.0, name="slow.npz")
    row = targets.row_tta(_run(), slow)
    assert row.cells["cnn"] == "20.0" and row.cells["met NCHW/best"] == "no"
    short = _history(tmp_path, [0.90, 0.91], 0.915, name="short.npz")
    row = targets.row_tta(_run(), short)
    assert row.cells["cnn"] == ">2.0" and row.cells["met NCHW/best"] == "no"
    assert row.figures["minutes"] is None and len(row.notes) == 1


def test_time_to_accuracy_timeout_and_failure(tmp_path):
    output = ("Epoch 1/12 - 80.1s - loss: 0.4 - acc: 0.85 - val_loss: 0.3 - val_acc: 0.8812"
              " - lr: 0.002\nEpoch 2/12 - 81.0s - loss: 0.3 - acc: 0.89 - val_loss: 0.28 - "
              "val_acc: 0.9010 - lr: 0.002\n")
    row = targets.row_tta(_run(returncode=-9, timed_out=True, output=output),
                          tmp_path / "none.history.json")
    assert row.text == (f"not reached: cnn.train stopped after {targets.TTA_TIMEOUT_MINUTES} "
                        "min: 2 epochs done, val acc 0.9010")
    assert row.figures["met"] is False
    row = targets.row_tta(_run(returncode=2, output="Traceback\nDataError: no data"),
                          tmp_path / "none.history.json")
    assert row.text == "error: cnn.train exited with code 2: DataError: no data"


OTHER_GROUPS = [g for g in targets.ROW_GROUPS if g != "tta"]


def test_run_all_runs_the_recipe_and_places_the_row(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_train_child(threads, out_path, data_dir=None, epochs=1, timeout=1800,
                         recipe=None):
        calls.append((recipe, timeout, data_dir))
        _history(tmp_path, [0.93], 0.94, seconds=120.0)
        return _run()
    monkeypatch.setattr(targets, "run_train_child", fake_train_child)
    monkeypatch.setattr(targets, "sidecar", lambda out, suffix: str(
        tmp_path / "tta.history.json"))
    rows = targets.run_all(1, skip=OTHER_GROUPS, data_dir="/data")
    assert calls == [(targets.TTA_RECIPE, 60 * targets.TTA_TIMEOUT_MINUTES, "/data")]
    by_label = {r.label: r for r in rows}
    assert by_label[targets.TTA_LABEL].cells["cnn"] == "2.0"
    assert [r.label for r in rows].index(targets.TTA_LABEL) == 3    # after accuracy
    assert "time to accuracy: `python -m cnn.train --arch" in capsys.readouterr().out


@pytest.mark.parametrize("quick, why", [(False, "--skip"), (True, "--quick")])
def test_tta_is_skipped_by_skip_and_by_quick(monkeypatch, quick, why):
    monkeypatch.setattr(targets, "run_train_child", lambda *a, **k: pytest.fail("ran"))
    rows = targets.run_all(1, quick=quick, skip=targets.ROW_GROUPS if not quick else
                           [g for g in OTHER_GROUPS if g not in ("http", "accuracy")])
    row = {r.label: r for r in rows}[targets.TTA_LABEL]
    assert row.text == f"skipped ({why})"



def test_the_recipe_runs_and_its_history_parses(idx_folder, tmp_path):
    """The real recipe's flags in a real cnn.train child, on 40 tiny images:
    the row reads the history that run wrote (accuracy far from 93% here)."""
    weights = tmp_path / "tta.npz"
    run = targets.run_train_child(1, weights, data_dir=idx_folder, recipe=targets.TTA_RECIPE,
                                  timeout=120)
    assert run["returncode"] == 0 and not run["timed_out"], run["output"]
    assert "--arch convnet_deep" in run["command"]
    row = targets.row_tta(run, sidecar(str(weights), ".history.json"))
    assert not row.text and row.cells["met NCHW/best"] == "no"
    assert row.figures["epochs"] == 12 and row.cells["cnn"].startswith(">")


def test_skip_accepts_tta():
    from cnn.bench import cli
    args = cli.build_parser().parse_args(cli.normalize_argv(["--skip", "tta,memory"]))
    assert args.skip == ["tta", "memory"]
