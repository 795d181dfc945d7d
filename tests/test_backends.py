"""The backend switch: get_backend(), CNN_BACKEND, and what happens when the
Cython kernels are not built."""
import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest

import cnn.backends
from cnn.backends import BACKENDS, OPS, BackendUnavailable, cython_available, get_backend

MODULES = {"cython": "cnn.backends.cython", "python": "cnn.backends.python",
           "naive": "cnn.backends.naive"}
COMPILED = ("cnn._conv", "cnn._pool", "cnn._relu", "cnn._dense", "cnn._softmax",
            "cnn._batchnorm")


@pytest.fixture(autouse=True)
def no_env_backend(monkeypatch):
    monkeypatch.delenv("CNN_BACKEND", raising=False)


def module(name):
    return importlib.import_module(MODULES[name])


def test_backend_names():
    assert BACKENDS == ("cython", "python", "naive")


def test_default_is_cython_when_built():
    if cython_available():
        assert get_backend() is module("cython")
    else:
        assert get_backend() is module("python")


def test_cython_is_built_here():
    """The test suite runs against a built tree (`python setup.py build_ext --inplace`)."""
    assert cython_available(), "the cython backend is not built"
    for name in COMPILED:
        importlib.import_module(name)


@pytest.mark.parametrize("name", BACKENDS)
def test_get_backend_by_name(name):
    assert get_backend(name) is module(name)
    assert get_backend(name.upper()) is module(name)      # names are case-insensitive


@pytest.mark.parametrize("name", BACKENDS)
def test_a_model_names_its_backend_as_users_type_it(name):
    from cnn.layers import Dense, Flatten
    from cnn.model import Sequential
    model = Sequential([Flatten(), Dense(2)], input_shape=(1, 2, 2)).build(backend=name.upper())
    assert model.backend == name
    assert model.set_backend(name).backend == name


def test_python_and_naive_are_pure_numpy():
    assert get_backend("python").__name__ == "cnn.backends.python"
    assert get_backend("naive").__name__ == "cnn.backends.naive"
    assert get_backend("python") is not get_backend("naive")


@pytest.mark.parametrize("name", BACKENDS)
def test_env_var_picks_backend(monkeypatch, name):
    monkeypatch.setenv("CNN_BACKEND", name)
    assert get_backend() is module(name)
    assert get_backend(None) is module(name)


def test_explicit_name_beats_env_var(monkeypatch):
    monkeypatch.setenv("CNN_BACKEND", "naive")
    assert get_backend("python") is module("python")


def test_empty_env_var_means_default(monkeypatch):
    monkeypatch.setenv("CNN_BACKEND", "")
    assert get_backend() is module("cython" if cython_available() else "python")


@pytest.mark.parametrize("name", ["numpy", "cuda", "", " python", "cython2", "naïve"])
def test_unknown_name_lists_choices(name):
    with pytest.raises(ValueError, match=r"backend must be one of cython, python, naive, "
                                         r"got " + re.escape(repr(name))):
        get_backend(name)


@pytest.mark.parametrize("name", [3, b"python", ("python",), True])
def test_non_string_name_rejected(name):
    with pytest.raises(ValueError, match=r"one of cython, python, naive"):
        get_backend(name)


def test_unknown_env_var_names_the_variable(monkeypatch):
    monkeypatch.setenv("CNN_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"CNN_BACKEND must be one of cython, python, naive, "
                                         r"got 'gpu'"):
        get_backend()


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_exposes_every_op(name):
    backend = get_backend(name)
    missing = [op for op in OPS if not callable(getattr(backend, op, None))]
    assert not missing, f"{name} backend lacks {missing}"


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_every_op_takes_keyword_only_threads(name, op):
    """Every op accepts ``threads`` (keyword-only, default None) on every backend."""
    param = inspect.signature(getattr(get_backend(name), op)).parameters.get("threads")
    assert param is not None, f"{name}.{op} has no threads parameter"
    assert param.kind is inspect.Parameter.KEYWORD_ONLY
    assert param.default is None


@pytest.mark.parametrize("op", OPS)
def test_backends_share_signatures(op):
    sigs = {name: str(inspect.signature(getattr(get_backend(name), op))) for name in BACKENDS}
    assert len(set(sigs.values())) == 1, sigs


def test_ops_list_matches_the_contract():
    """OPS holds each forward with its backward (softmax_cross_entropy is both)."""
    assert len(OPS) == len(set(OPS))
    for op in OPS:
        if op.endswith("_forward"):
            assert op.replace("_forward", "_backward") in OPS
        elif op.endswith("_backward"):
            assert op.replace("_backward", "_forward") in OPS
    assert "softmax_cross_entropy" in OPS


def test_backend_unavailable_is_a_runtime_error():
    assert issubclass(BackendUnavailable, RuntimeError)


# --------------------------------------------------------------------------------------
# The Cython kernels not built: simulated in a child process by making a compiled
# module unimportable (a None entry in sys.modules makes its import fail).
# --------------------------------------------------------------------------------------

UNBUILT = textwrap.dedent("""
    import os, sys
    sys.modules[{module!r}] = None
    os.environ.pop("CNN_BACKEND", None)
    import cnn.backends as backends
    assert not backends.cython_available(), "cython_available() with {module} missing"
    default = backends.get_backend()
    assert default.__name__ == "cnn.backends.python", default.__name__
    try:
        backends.get_backend("cython")
    except backends.BackendUnavailable as exc:
        print("MESSAGE:", exc)
    else:
        raise SystemExit("get_backend('cython') did not raise BackendUnavailable")
    os.environ["CNN_BACKEND"] = "cython"
    try:
        backends.get_backend()
    except backends.BackendUnavailable:
        print("ENV: raised")
    print("PYTHON:", backends.get_backend("python").__name__)
""")


def run_child(code):
    env = dict(os.environ)
    env.pop("CNN_BACKEND", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(cnn.backends.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("missing", ["cnn._conv", "cnn._batchnorm"])
def test_cython_not_built_raises_with_build_instructions(missing):
    proc = run_child(UNBUILT.format(module=missing))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    message = next(line for line in proc.stdout.splitlines() if line.startswith("MESSAGE:"))
    assert "not built" in message
    # it says how to build the kernels
    assert "pip install -e ." in message or "setup.py build_ext" in message, message
    # and why the import failed
    assert missing in message, message
    assert "ENV: raised" in proc.stdout   # CNN_BACKEND=cython does not fall back either
    assert "PYTHON: cnn.backends.python" in proc.stdout


def test_cython_not_built_in_process(monkeypatch):
    """The same, in this process: monkeypatch restores sys.modules afterwards."""
    monkeypatch.setitem(sys.modules, "cnn._conv", None)
    monkeypatch.delitem(sys.modules, "cnn.backends.cython", raising=False)
    assert not cython_available()
    assert get_backend() is module("python")
    with pytest.raises(BackendUnavailable, match=r"not built.*(pip install -e \.|build_ext)"):
        get_backend("cython")


# --------------------------------------------------------------------------------------
# No silent fallback: a warning at import, available(), the CLIs' line (fallback_note).
# --------------------------------------------------------------------------------------

WARNING = "KernelsNotBuiltWarning"


def test_available_says_what_is_built():
    assert cnn.backends.available() == {"cython": True, "python": True, "naive": True}
    assert cnn.backends.missing_kernels() == []
    assert cnn.backends.fallback_note() is None


def test_available_without_kernels_in_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "cnn._softmax", None)
    monkeypatch.delitem(sys.modules, "cnn.backends.cython", raising=False)
    assert cnn.backends.available() == {"cython": False, "python": True, "naive": True}
    assert cnn.backends.missing_kernels() == ["cnn._softmax"]
    note = cnn.backends.fallback_note()
    assert "cnn._softmax" in note and "pip install -e ." in note and "python backend" in note
    # a backend chosen by name or CNN_BACKEND is no fallback: nothing to say
    assert cnn.backends.fallback_note("python") is None
    monkeypatch.setenv("CNN_BACKEND", "naive")
    assert cnn.backends.fallback_note() is None


IMPORT_UNBUILT = textwrap.dedent("""
    import sys, warnings
    {block}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import cnn, cnn.backends as backends
        print("AT IMPORT:", len(caught))
        print("AVAILABLE:", backends.available())
        print("DEFAULT:", backends.get_backend().__name__)
        backends.get_backend()
    for w in caught:
        print("WARNING:", w.category.__name__, w.message)
""")
BLOCK_BY_SYS_MODULES = "sys.modules['cnn._conv'] = None"
BLOCK_BY_HOOK = textwrap.dedent("""
    class Refuse:   # an import hook: the compiled module is not there
        def find_spec(self, name, path=None, target=None):
            if name == 'cnn._conv':
                raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    sys.meta_path.insert(0, Refuse())
""")


@pytest.mark.parametrize("block", [BLOCK_BY_SYS_MODULES, BLOCK_BY_HOOK],
                         ids=["sys.modules", "import-hook"])
def test_import_warns_once_when_kernels_are_missing(block):
    proc = run_child(IMPORT_UNBUILT.format(block=block))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "AVAILABLE: {'cython': False, 'python': True, 'naive': True}" in proc.stdout
    assert "DEFAULT: cnn.backends.python" in proc.stdout
    assert "AT IMPORT: 1" in proc.stdout, proc.stdout
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1, proc.stdout      # not again per get_backend()
    assert WARNING in warnings[0], warnings
    assert "cnn._conv" in warnings[0] and "pip install -e ." in warnings[0], warnings


def test_import_is_quiet_when_built_or_numpy_chosen():
    proc = run_child(IMPORT_UNBUILT.format(block=""))
    assert proc.returncode == 0, proc.stderr
    assert "DEFAULT: cnn.backends.cython" in proc.stdout
    assert WARNING not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    code = "import os; os.environ['CNN_BACKEND'] = 'python'\n" + BLOCK_BY_SYS_MODULES
    proc = run_child(IMPORT_UNBUILT.format(block=code))
    assert proc.returncode == 0, proc.stderr
    assert "DEFAULT: cnn.backends.python" in proc.stdout
    assert WARNING not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_kernels_found_but_not_loading_warn_at_the_fallback(monkeypatch):
    """Present for the import-time look but failing to load (e.g. a shared library
    missing): the default get_backend() warns when it falls back."""
    monkeypatch.setattr(cnn.backends, "missing_kernels", lambda: [])
    monkeypatch.setattr(cnn.backends, "_warned", False)
    monkeypatch.setitem(sys.modules, "cnn._dense", None)
    monkeypatch.delitem(sys.modules, "cnn.backends.cython", raising=False)
    with pytest.warns(cnn.backends.KernelsNotBuiltWarning, match="failed to load"):
        assert get_backend() is module("python")
    assert "failed to load" in cnn.backends.fallback_note()


def test_kernel_modules_name_every_pyx():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    built = {f"cnn._{p.stem}" for p in (root / "pyx").glob("*.pyx")}
    assert set(cnn.backends.KERNEL_MODULES) == built
