"""cnn.bench's one-table run (``python -m cnn.bench``): the argument parser, the
table, the rows' bookkeeping and the paths for missing comparison packages.

Fast smoke tests only: tiny repeats, no timing is ever asserted (the machine is
shared), and PyTorch / ONNX Runtime are blocked so that no child process runs.
"""
import json
import sys
import textwrap
import types

import numpy as np
import pytest

from cnn.bench import cli, peers, report, targets, train_epoch, workloads

ALL_LABELS = [
    "convnet train epoch (s)", "lenet5 train epoch (s)", "convnet accuracy, 1 epoch",
    "time to 93% test acc (min)",
    "convnet infer b64 (img/s)", "lenet5 infer b64 (img/s)", "convnet infer b1 (ms)",
    "lenet5 infer b1 (ms)", "conv fwd+bwd 2 vs 1 thread", "convnet step 2 vs 1 thread",
    "HTTP b64 / in-process", "peak RSS convnet training (MiB)",
]


@pytest.fixture
def no_comparisons(monkeypatch):
    """torch, onnxruntime and onnx look uninstalled (None in sys.modules)."""
    for name in ("torch", "onnxruntime", "onnx"):
        monkeypatch.setitem(sys.modules, name, None)


def test_no_subcommand_means_all():
    assert cli.normalize_argv([]) == ["all"]
    assert cli.normalize_argv(["--quick"]) == ["all", "--quick"]
    for first in ("all", "kernels", "train", "--help"):
        assert cli.normalize_argv([first])[0] == first


def test_parser_accepts_the_new_form_and_keeps_the_old():
    parser = cli.build_parser()
    args = parser.parse_args(cli.normalize_argv(
        ["--quick", "--skip", "accuracy,http,memory", "--threads", "2", "--json", "out.json",
         "--accuracy-epochs", "0", "--data-dir", "/data"]))
    assert (args.what, args.quick, args.skip, args.threads) == \
        ("all", True, ["accuracy", "http", "memory"], 2)
    assert (args.json_path, args.accuracy_epochs, args.data_dir) == ("out.json", 0, "/data")
    args = parser.parse_args(cli.normalize_argv(["all"]))
    assert (args.quick, args.skip, args.accuracy_epochs) == (False, [], 1)
    args = parser.parse_args(["kernels", "--dtype", "float64", "--coretype", "Haswell"])
    assert (args.what, args.dtype, args.coretype) == ("kernels", "float64", ["Haswell"])
    args = parser.parse_args(["train", "--full-epoch", "--arch", "lenet5"])
    assert (args.what, args.full_epoch, args.arch) == ("train", True, ["lenet5"])


@pytest.mark.parametrize("bad", [["--skip", "nonsense"], ["--accuracy-epochs", "-1"]])
def test_parser_rejects_bad_values(bad, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(cli.normalize_argv(bad))
    assert "error" in capsys.readouterr().err


def test_package_version_and_the_install_hint(monkeypatch):
    assert report.package_version("numpy") == np.__version__
    assert report.package_version("surely_not_an_installed_package_xyz") is None
    monkeypatch.setitem(sys.modules, "torch", None)
    assert report.package_version("torch") is None
    assert report.missing_hint("torch") == \
        "torch: not installed; " + report.PACKAGE_HINTS["torch"]
    assert "pip install torch==2.13.0" in report.missing_hint("torch")
    assert "pip install onnxruntime" in report.missing_hint("onnxruntime")


def test_quick_run_prints_one_table_and_the_install_hints(no_comparisons, capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert cli.main(["--quick", "--skip", "accuracy,http,memory", "--threads", "1",
                     "--steps", "1", "--repeat", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("machine: ")
    for label in ALL_LABELS:
        assert label in text
    assert text.count("target ") == 1            # one table
    assert "torch: not installed; pip install torch==2.13.0" in text
    assert "onnxruntime: not installed; pip install onnxruntime" in text
    assert report.INSTALL_HINT in text
    assert "error" not in text
    table = {line[:report.LABEL_WIDTH].strip(): line for line in text.splitlines()}
    assert "skipped" in table["peak RSS convnet training (MiB)"]
    assert "skipped" in table["convnet accuracy, 1 epoch"]
    assert "skipped (--quick)" in table["time to 93% test acc (min)"]
    assert " n/a " in table["convnet infer b64 (img/s)"]
    assert "ORT goal n/a (onnxruntime not installed and onnx not installed)" in \
        table["convnet infer b64 (img/s)"]
    assert "kernels: baseline" in text.splitlines()[0]
    assert "% peak = the row's GFLOP/s over" in text
    payload = json.loads(out.read_text())
    assert payload["versions"]["torch"] is None
    rows = {r["label"]: r for r in payload["rows"]}
    assert set(rows) == set(ALL_LABELS)
    assert rows["convnet infer b64 (img/s)"]["figures"]["cnn"] > 0
    assert rows["convnet infer b64 (img/s)"]["figures"]["gflops"] > 0
    assert rows["convnet infer b64 (img/s)"]["met_ort"] == "n/a"
    assert payload["peak_gflops"] > 0 and payload["kernels"]["variant"] == "baseline"
    assert rows["convnet train epoch (s)"]["figures"]["torch"] is None


def test_a_failing_row_does_not_stop_the_others(no_comparisons, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(targets, "row_train", boom)
    rows = targets.run_all(1, quick=True, skip=["infer", "latency", "scaling", "memory"],
                           steps=1, repeat=1)
    text = capsys.readouterr().out
    assert "error: RuntimeError: boom" in text
    by_label = {r.label: r for r in rows}
    assert by_label["convnet train epoch (s)"].text == "error: RuntimeError: boom"
    assert by_label["peak RSS convnet training (MiB)"].text == "skipped (--skip)"
    assert by_label["HTTP b64 / in-process"].text == "skipped (--quick)"


def test_compare_row_ratios_goals_and_missing_columns():
    # times: lower is better; best is the faster PyTorch layout
    row = report.compare_row("train", "t", "s", 10.0, {"torch": 12.0, "torch-cl": 8.0,
                                                      "onnxrt": "-"}, ("<", 1.0), False)
    assert row.figures["torch_best"] == 8.0
    assert row.cells["ours/best"] == "1.25x" and row.cells["ours/NCHW"] == "0.83x"
    assert row.cells["met NCHW/best"] == "yes/no"
    assert "best=torch-cl" in row.notes
    # throughputs: higher is better
    row = report.compare_row("infer", "i", "img/s", 900.0, {"torch": 300.0, "torch-cl": None,
                                                           "onnxrt": "error: x"}, (">=", 3.0),
                             True)
    assert row.cells["torch-cl"] == "n/a" and row.cells["onnxrt"] == "error"
    assert row.cells["met NCHW/best"] == "yes/yes"
    assert any("onnxrt error" in n for n in row.notes)
    # nothing to compare with
    row = report.compare_row("latency", "l", "ms", 1.0, {"torch": None, "torch-cl": None,
                                                        "onnxrt": None}, ("<", 1.0), False)
    assert row.cells["ours/best"] == "-" and row.cells["met NCHW/best"] == "-/-"
    assert report.format_table([row]).splitlines()[-1].startswith("l ")


def _write(path, body):
    path.write_text(textwrap.dedent(body))
    return path


def test_http_row_parses_the_last_json_line(tmp_path):
    script = _write(tmp_path / "serve.py", """
        import argparse, json
        p = argparse.ArgumentParser()
        for o in ("--batches", "--concurrency", "--workers", "--requests", "--seconds",
                  "--model"):
            p.add_argument(o)
        p.add_argument("--json", action="store_true")
        a = p.parse_args()
        assert (a.batches, a.concurrency, a.workers, a.json) == ("64", "8", "2", True)
        print("a table first")
        print(json.dumps({"http_images_per_s": 3000.0, "inprocess_images_per_s": 4000.0,
                          "ratio": 0.75}))
    """)
    row = targets.row_http(script, requests=5, seconds=1)
    assert not row.text
    assert row.figures["ratio"] == 0.75 and row.cells["met NCHW/best"] == "yes"
    assert row.cells["cnn"] == "3,000"


def test_http_row_not_measured_reasons(tmp_path):
    assert targets.row_http(tmp_path / "missing.py").text.startswith("not measured: ")
    old = _write(tmp_path / "old.py", """
        import argparse
        argparse.ArgumentParser().parse_args()
    """)
    assert "no --json option" in targets.row_http(old).text
    failing = _write(tmp_path / "failing.py", """
        import sys
        if "--help" in sys.argv:
            print("--json")
            sys.exit(0)
        sys.exit("cannot start gunicorn")
    """)
    text = targets.row_http(failing).text
    assert text.startswith("not measured: ") and "cannot start gunicorn" in text
    garbled = _write(tmp_path / "garbled.py", """
        print("--json")
    """)
    assert targets.row_http(garbled).text.startswith("not measured: no JSON result")
    reported = _write(tmp_path / "reported.py", """
        import json, sys
        print("--json")
        if "--help" not in sys.argv:
            print(json.dumps({"http_images_per_s": None, "error": "gunicorn not ready"}))
            sys.exit(1)
    """)
    assert targets.row_http(reported).text == "not measured: reported.py: gunicorn not ready"


def test_memory_row_from_a_finished_run():
    run = {"returncode": 0, "peak_rss_mib": 400.0, "test_acc": 0.88, "seconds": 30.0,
           "output": ""}
    row = targets.row_memory(run)
    assert row.cells["cnn"] == "400" and row.cells["met NCHW/best"] == "yes"
    assert "88.00%" in row.notes[0]
    row = targets.row_memory(dict(run, returncode=2, output="Traceback\nDataError: no data"))
    assert row.text == "error: cnn.train exited with code 2: DataError: no data"


def test_train_subcommand_without_torch_prints_the_hint(no_comparisons, capsys):
    train_epoch.run_train(1, 8, 1, False, ["lenet5"])
    text = capsys.readouterr().out
    assert "lenet5" in text and "not installed; pip install torch==2.13.0" in text


def test_onnx_graph_without_torch_is_cnn_exports_graph_of_our_model():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    data, how = peers._onnx_bytes("lenet5", None)
    assert how == "cnn.export of cnn's weights (no torch)"
    model = peers._cnn_twin("lenet5")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    logits = session.run(["logits"], {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(logits, model.forward(x), rtol=1e-4, atol=1e-4)


def test_cnn_twin_takes_the_torch_modules_weights():
    class Param:     # what the twin reads of a torch Parameter
        def __init__(self, value):
            self.value = value

        def detach(self):
            return self

        def numpy(self):
            return self.value
    ours = peers._cnn_twin("lenet5")
    rng = np.random.default_rng(0)
    net = [types.SimpleNamespace(weight=Param(rng.standard_normal(layer.params["w"].shape)),
                                 bias=Param(rng.standard_normal(layer.params["b"].shape)))
           if "w" in layer.params else object() for layer in ours.layers]
    twin = peers._cnn_twin("lenet5", net)
    for m, layer in zip(net, twin.layers):
        if "w" in layer.params:
            np.testing.assert_allclose(layer.params["w"], m.weight.value, rtol=1e-6)
            np.testing.assert_allclose(layer.params["b"], m.bias.value, rtol=1e-6)


def test_train_child_reports_its_own_peak_memory(idx_folder, tmp_path):
    run = targets.run_train_child(1, tmp_path / "m.npz", data_dir=idx_folder, timeout=120)
    assert run["returncode"] == 0, run["output"]
    assert run["peak_rss_mib"] > 10 and run["test_acc"] is not None
    assert (tmp_path / "m.npz").is_file()
    assert targets.row_memory(run).cells["met NCHW/best"] == "yes"


def test_cnn_accuracy_runs_the_train_recipe(make_idx_dir):
    folder = make_idx_dir(n_train=64, n_test=16)
    result = workloads.cnn_accuracy(1, 1, data_dir=str(folder))
    assert 0.0 <= result["test_acc"] <= 1.0
