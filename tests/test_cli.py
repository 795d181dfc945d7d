"""The command-line tools end to end: cnn.train, cnn.evaluate and cnn.predict.

A tiny model is trained once for the module (600 images, one epoch); the other
tests evaluate it and classify PNG files made from test-set images, comparing
with the same model used in-process.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn import __version__
from cnn.data import DEFAULT_DATA_DIR, load_dataset
from cnn.io import load_model

# imported here, not under capsys: cnn.fit.fit binds sys.stdout as its default stream
from cnn.train import main as train_main

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not os.path.isdir(DEFAULT_DATA_DIR),
                                reason=f"Fashion-MNIST is not installed at {DEFAULT_DATA_DIR}")


def run(module, *args, cwd, timeout=300):
    """``python -m module args`` in ``cwd`` with the repository on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("CNN_DATA_DIR", None)      # the default folder, whatever the caller set
    env.pop("CNN_BACKEND", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc, *words, code=2):
    """Exit ``code``, a message on stderr mentioning every word, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(DEFAULT_DATA_DIR)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, weights path) of a model trained by the CLI on 600 images for one epoch."""
    folder = tmp_path_factory.mktemp("cli")
    out = folder / "m.npz"
    proc = run("cnn.train", "--limit", 600, "--epochs", 1, "--out", out, "--progress", "lines",
               cwd=folder)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"cnn {__version__}: training" in proc.stdout, proc.stdout
    assert re.search(r"^Epoch 1/1 - .*loss: .*acc: ", proc.stdout, re.M), proc.stdout
    assert re.search(r"test_acc: \d\.\d{4}", proc.stdout), proc.stdout
    for suffix in (".npz", ".ckpt", ".history.json", ".png"):
        path = folder / f"m{suffix}"
        assert path.is_file() and path.stat().st_size > 0, f"{path} was not written"
    history = json.loads((folder / "m.history.json").read_text())
    assert len(history["history"]) == 1
    assert (folder / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return folder, out


@pytest.fixture(scope="module")
def model(trained):
    return load_model(trained[1])


# ----------------------------------------------------------------------- help


@pytest.mark.parametrize("module, flags", [
    ("cnn.train", ["--arch", "--epochs", "--lr", "--batch-size", "--out", "--resume",
                   "--data-dir", "--checkpoint-every", "*.npz"]),
    ("cnn.evaluate", ["MODEL", "--data-dir", "--batch-size", "--backend", "--threads",
                      "--json"]),
    ("cnn.predict", ["MODEL", "IMAGE", "--top", "--invert", "--json"]),
])
def test_help(module, flags, tmp_path):
    proc = run(module, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    for flag in flags:
        assert flag in proc.stdout, (flag, proc.stdout)


# ------------------------------------------------------------------- evaluate


def test_evaluate_text_and_json_match_in_process_predict(trained, model, dataset):
    folder, weights = trained
    expected_pred = model.predict(dataset.test_images)
    expected_acc = float((expected_pred == dataset.test_labels).mean())
    n = len(dataset.test_labels)

    proc = run("cnn.evaluate", weights, "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["accuracy"] == expected_acc
    assert report["total"] == n
    assert report["correct"] == int((expected_pred == dataset.test_labels).sum())
    assert report["class_names"] == list(dataset.class_names)
    assert np.isfinite(report["loss"]) and report["loss"] > 0
    cm = np.array(report["confusion_matrix"])
    expected_cm = np.zeros((10, 10), int)
    np.add.at(expected_cm, (dataset.test_labels, expected_pred), 1)
    np.testing.assert_array_equal(cm, expected_cm)     # rows true, columns predicted
    assert [r["class"] for r in report["per_class"]] == list(dataset.class_names)
    for k, row in enumerate(report["per_class"]):
        assert row["total"] == int((dataset.test_labels == k).sum())
        assert row["accuracy"] == pytest.approx(cm[k, k] / cm[k].sum())

    proc = run("cnn.evaluate", weights, "--batch-size", 1000, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"test accuracy: {expected_acc:.4f}" in out, out
    assert f"test loss: {report['loss']:.4f}" in out, out
    assert "per-class accuracy" in out and "confusion matrix" in out
    for name in dataset.class_names:
        assert name in out
    # The matrix rows: "K NAME  c0  c1 ... c9", aligned, matching the JSON.
    rows = [line for line in out.splitlines()
            if re.match(r"^\s+\d \S.*?(\s+\d+){10}$", line)]
    assert len(rows) == 10, out
    assert len({len(r) for r in rows}) == 1, "the confusion matrix rows are not aligned"
    parsed = np.array([[int(v) for v in r.split()[-10:]] for r in rows])
    np.testing.assert_array_equal(parsed, cm)


def test_evaluate_errors(trained, tmp_path, make_idx_dir):
    folder, weights = trained
    proc = run("cnn.evaluate", tmp_path / "missing.npz", cwd=tmp_path)
    assert_clean_error(proc, "missing.npz", "does not exist")

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(weights.read_bytes()[:2000])
    proc = run("cnn.evaluate", corrupt, cwd=tmp_path)
    assert_clean_error(proc, "corrupt.npz", "not a readable cnn weights file")

    proc = run("cnn.evaluate", weights, "--data-dir", "/nonexistent", cwd=tmp_path)
    assert_clean_error(proc, "/nonexistent", "does not exist")

    small = make_idx_dir("small", size=(20, 20))
    proc = run("cnn.evaluate", weights, "--data-dir", small, cwd=tmp_path)
    assert_clean_error(proc, "(1, 28, 28)", "(1, 20, 20)")

    more = make_idx_dir("more")
    (more / "classes.txt").write_text("".join(f"class{k}\n" for k in range(12)))
    proc = run("cnn.evaluate", weights, "--data-dir", more, cwd=tmp_path)
    assert_clean_error(proc, "10 classes", "has 12")

    proc = run("cnn.evaluate", weights, "--batch-size", 0, cwd=tmp_path)
    assert_clean_error(proc, "--batch-size")


# -------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def png_files(trained, dataset):
    """Eight test images as PNG files (light object on black, as in the dataset)."""
    from PIL import Image
    folder = trained[0] / "png"
    folder.mkdir()
    picks = []
    for i, img in enumerate(dataset.test_images):
        border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
        if border.mean() <= 127:           # "auto" leaves these as they are
            picks.append(i)
        if len(picks) == 8:
            break
    paths = []
    for i in picks:
        path = folder / f"test{i}.png"
        Image.fromarray(dataset.test_images[i]).save(path)
        paths.append(path)
    return paths, dataset.test_images[picks]


def test_predict_matches_in_process_model(trained, model, png_files):
    folder, weights = trained
    paths, pixels = png_files
    expected = model.predict(pixels)
    proba = model.predict_proba(pixels)
    names = model.class_names

    proc = run("cnn.predict", weights, *paths, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(paths), proc.stdout
    for line, path, label in zip(lines, paths, expected):
        head, _, rest = line.partition(": ")
        assert head == str(path)
        top = [re.fullmatch(r"(.+) (\d\.\d\d)", part) for part in rest.split(", ")]
        assert len(top) == 3 and all(top), line
        assert top[0][1] == names[label], line
        probs = [float(m[2]) for m in top]
        assert probs == sorted(probs, reverse=True)

    proc = run("cnn.predict", weights, *paths, "--json", "--top", 5, "--invert", "auto",
               cwd=folder)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(p) for p in paths]
    for r, label, p in zip(results, expected, proba):
        assert r["label"] == int(label) and r["class"] == names[label]
        assert r["probability"] == pytest.approx(float(p[label]), abs=1e-5)
        assert len(r["top"]) == 5 and r["top"][0]["label"] == int(label)
        assert [t["label"] for t in r["top"]] == list(np.argsort(-p, kind="stable")[:5])
        assert all(t["class"] == names[t["label"]] for t in r["top"])


def test_predict_reports_a_corrupt_file_and_predicts_the_others(trained, model, png_files,
                                                                tmp_path):
    weights = trained[1]
    paths, pixels = png_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(paths[0].read_bytes()[:40])          # a truncated PNG
    files = [paths[0], bad, paths[1]]
    expected = model.predict(pixels[:2])

    proc = run("cnn.predict", weights, *files, cwd=tmp_path)
    assert_clean_error(proc, "broken.png", code=1)
    error_lines = [line for line in proc.stderr.splitlines() if "broken.png" in line]
    assert error_lines and len(error_lines[0]) > len(str(bad)) + 10, proc.stderr  # a reason
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    for line, path, label in zip(lines, [paths[0], paths[1]], expected):
        assert line.startswith(f"{path}: {model.class_names[label]} ")

    proc = run("cnn.predict", weights, *files, "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(f) for f in files]
    assert set(results[1]) == {"file", "error"} and results[1]["error"]
    assert [results[0]["label"], results[2]["label"]] == [int(v) for v in expected]


def test_predict_errors(trained, png_files, tmp_path):
    weights = trained[1]
    paths = png_files[0]
    proc = run("cnn.predict", tmp_path / "missing.npz", paths[0], cwd=tmp_path)
    assert_clean_error(proc, "missing.npz", "does not exist")
    proc = run("cnn.predict", weights, paths[0], "--top", 0, cwd=tmp_path)
    assert_clean_error(proc, "--top")
    proc = run("cnn.predict", weights, paths[0], "--invert", "maybe", cwd=tmp_path)
    assert_clean_error(proc, "--invert")
    proc = run("cnn.predict", weights, cwd=tmp_path)
    assert_clean_error(proc, "IMAGE")


# ---------------------------------------------------------------------- train


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], ["--epochs", "'0'"]),
    (["--lr", "-1"], ["--lr", "'-1'"]),
    (["--arch", "nonsense"], ["--arch", "nonsense"]),
    (["--data-dir", "/nonexistent"], ["/nonexistent", "does not exist"]),
])
def test_train_bad_arguments(args, words, tmp_path):
    proc = run("cnn.train", *args, "--out", tmp_path / "x.npz", cwd=tmp_path)
    assert_clean_error(proc, *words)
    assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------ version and the cnn command

TOOLS = ["cnn.train", "cnn.evaluate", "cnn.predict", "cnn.export"]
COMMANDS = ["train", "evaluate", "predict", "export", "bench"]


@pytest.mark.parametrize("name", TOOLS)
def test_version_flag(name, capsys):
    import importlib
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(name).main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"cnn {__version__}\n"


def test_version_is_read_from_the_package_metadata(monkeypatch):
    import importlib.metadata

    import cnn
    assert __version__ == importlib.metadata.version("cnn")

    # a source tree without metadata: pyproject.toml's number
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    monkeypatch.setattr(importlib.metadata, "version", {"cnn": "9.8.7"}.get)
    assert cnn._version() == "9.8.7"      # read at run time, not written in the code

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cnn._version() == declared


def test_cnn_command_help_and_version(tmp_path):
    proc = run("cnn", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert re.search(rf"^  {command}\s+\w", proc.stdout, re.M), (command, proc.stdout)
    proc = run("cnn", "--version", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, f"cnn {__version__}\n"), proc.stderr


def test_cnn_command_errors(tmp_path):
    assert_clean_error(run("cnn", "trian", cwd=tmp_path), "trian", "train", "bench")
    assert_clean_error(run("cnn", cwd=tmp_path), "COMMAND")
    # the subcommand's own checks answer for it
    assert_clean_error(run("cnn", "train", "--epochs", 0, cwd=tmp_path), "--epochs")


@pytest.mark.parametrize("command", COMMANDS)
def test_cnn_command_hands_its_arguments_to_the_module(command, monkeypatch):
    import importlib

    from cnn.__main__ import main
    seen = []
    monkeypatch.setattr(importlib.import_module(f"cnn.{command}"), "main",
                        lambda argv: seen.append(argv) or 7)
    assert main([command, "--help", "x", "--version"]) == 7    # its status, its flags
    assert seen == [["--help", "x", "--version"]]


def test_cnn_predict_is_python_m_cnn_predict(trained, png_files, capsys):
    from cnn.__main__ import main
    from cnn.predict import main as predict
    args = [str(trained[1]), *map(str, png_files[0][:3]), "--json"]
    assert predict(args) == 0
    expected = capsys.readouterr().out
    assert main(["predict", *args]) == 0
    assert capsys.readouterr().out == expected and json.loads(expected)


# ------------------------------------------- the kernels not built: the CLIs say so


@pytest.fixture
def unbuilt(monkeypatch):
    """The compiled kernels gone, as in a source install that did not build them."""
    import cnn.backends
    monkeypatch.setitem(sys.modules, "cnn._conv", None)
    monkeypatch.delitem(sys.modules, "cnn.backends.cython", raising=False)
    monkeypatch.setattr(cnn.backends, "_warned", True)      # the import warning: test_backends
    monkeypatch.delenv("CNN_BACKEND", raising=False)


def not_built_lines(text):
    return [line for line in text.splitlines() if "kernels are not built" in line]


@pytest.mark.parametrize("tool", ["evaluate", "predict", "export"])
def test_tools_print_one_line_when_falling_back(tool, unbuilt, trained, tmp_path, capsys):
    import importlib
    main = importlib.import_module(f"cnn.{tool}").main
    missing = str(tmp_path / "missing.npz")     # the line comes first, then the error
    args = {"evaluate": [missing], "predict": [missing, "x.png"],
            "export": [missing, str(tmp_path / "m.onnx")]}[tool]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = not_built_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"cnn.{tool}: warning:"), err
    assert "cnn._conv" in lines[0] and "pip install -e ." in lines[0], lines
    if tool != "export":                        # a chosen backend is no fallback
        assert main(args + ["--backend", "python"]) == 2
        assert not not_built_lines(capsys.readouterr().err)


def test_tools_quiet_when_the_kernels_are_built(tmp_path, capsys):
    from cnn.predict import main
    assert main([str(tmp_path / "missing.npz"), "x.png"]) == 2
    assert not not_built_lines(capsys.readouterr().err)


def test_train_header_says_when_falling_back(unbuilt, tmp_path, capsys):
    assert train_main(["--limit", "64", "--epochs", "1", "--arch",
                 "conv4k3-relu-maxpool2-flatten-dense10", "--out", str(tmp_path / "t.npz"),
                 "--progress", "lines"]) == 0
    out = capsys.readouterr().out
    header = out.split("\nEpoch 1/1")[0].splitlines()
    assert header[1].startswith("  backend python,"), out
    assert len(not_built_lines("\n".join(header))) == 1, out
