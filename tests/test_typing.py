"""The public API carries type hints, and the package says so (PEP 561 py.typed)."""
import inspect
from pathlib import Path

import pytest

import service
from cnn.backends import fallback_note, get_backend
from cnn.images import decode_image, decode_images, pixels_from_array, upload_policy
from cnn.io import load_model, save_model
from cnn.model import Sequential

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = [get_backend, fallback_note, load_model, save_model, decode_image, decode_images,
             pixels_from_array, upload_policy, service.create_app]
METHODS = [getattr(Sequential, name) for name in dir(Sequential)
           if not name.startswith("_") and callable(getattr(Sequential, name))]


@pytest.mark.parametrize("function", FUNCTIONS + METHODS + [Sequential.__init__],
                         ids=lambda f: f.__qualname__)
def test_every_parameter_and_return_is_annotated(function):
    signature = inspect.signature(function)
    bare = [name for name, p in signature.parameters.items()
            if name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    assert not bare, f"{function.__qualname__}: no type hint for {bare}"
    assert signature.return_annotation is not inspect.Signature.empty, function.__qualname__


def test_the_wheel_ships_py_typed():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    assert (ROOT / "cnn" / "py.typed").is_file()
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools_cfg["package-data"]["cnn"]
