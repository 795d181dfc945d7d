"""pyproject.toml lists its packages by hand, so a module that becomes a package
(cnn/data.py -> cnn/data/) must be added there, or `pip install .` and the
Docker images silently leave it out while the editable install still works."""
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def unlisted_packages(pyproject_text, root=ROOT):
    """Packages (folders with __init__.py) under cnn/ and service/ that
    [tool.setuptools] packages does not name."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    listed = set(tomllib.loads(pyproject_text)["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(root), include=["cnn", "cnn.*", "service", "service.*"]))
    return sorted(found - listed)


def test_every_package_is_listed_in_pyproject():
    missing = unlisted_packages((ROOT / "pyproject.toml").read_text())
    assert not missing, (f"add {missing} to [tool.setuptools] packages in pyproject.toml, "
                         f"or the installed package and the Docker images lack them")
