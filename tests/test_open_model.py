"""cnn._cli.open_model: the opening evaluate and predict share (backend, weights file)."""
import importlib
import sys

import pytest

from cnn._cli import open_model
from cnn.architectures import build_architecture
from cnn.io import save_model

TOOLS = {"evaluate": lambda model: [model],
         "predict": lambda model: [model, "x.png"]}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "lenet.npz"
    save_model(path, build_architecture("lenet5", 10).build(seed=0))
    return str(path)


@pytest.fixture
def unbuilt(monkeypatch):
    """The compiled kernels gone, as in a source install that did not build them."""
    import cnn.backends
    monkeypatch.setitem(sys.modules, "cnn._conv", None)
    monkeypatch.delitem(sys.modules, "cnn.backends.cython", raising=False)
    monkeypatch.setattr(cnn.backends, "_warned", True)
    monkeypatch.delenv("CNN_BACKEND", raising=False)


def run(tool, args, capsys):
    code = importlib.import_module(f"cnn.{tool}").main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def test_open_model_loads_on_the_backend_asked_for(weights, capsys):
    model, code = open_model("prog", weights, "naive", 1)
    assert code is None and model.backend == "naive" and model.threads == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("tool", TOOLS)
def test_a_missing_or_corrupt_weights_file_is_a_model_error(tool, tmp_path, capsys):
    missing = str(tmp_path / "missing.npz")
    code, err = run(tool, TOOLS[tool](missing), capsys)
    assert code == 2 and err.startswith(f"cnn.{tool}: error: MODEL: "), err
    assert "missing.npz" in err
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    code, err = run(tool, TOOLS[tool](str(corrupt)), capsys)
    assert code == 2 and err.startswith(f"cnn.{tool}: error: MODEL: "), err


@pytest.mark.parametrize("tool", TOOLS)
def test_cython_asked_for_but_not_built_is_a_backend_error(tool, unbuilt, weights, capsys):
    code, err = run(tool, TOOLS[tool](weights) + ["--backend", "cython"], capsys)
    assert code == 2, err
    assert err.startswith(f"cnn.{tool}: error: --backend: the cython backend is not built"), err
    assert "kernels are not built" not in err     # asked for: no fallback line


def test_evaluate_checks_the_plot_path_before_reading_the_model(tmp_path, capsys):
    code, err = run("evaluate", [str(tmp_path / "missing.npz"), "--plot",
                                 str(tmp_path / "cm.jpg")], capsys)
    assert code == 2 and err.startswith("cnn.evaluate: error: --plot: "), err
