"""pyproject.toml lists its packages by hand, so a module that becomes a package
(cnn/data.py -> cnn/data/) must be added there, or `pip install .` and the
Docker images silently leave it out while the editable install still works."""
import os
import shutil
import subprocess
import sys
import tarfile
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


# The sdist, as `python -m build --sdist` makes it from a clean clone (HEAD, not
# the working tree: untracked .so and .c files must not hide a missing rule).
# Build isolation installs the build requirements of pyproject.toml, as pip does.
SDIST_TIMEOUT = 120   # s; about 10 s here
INSTALL_TIMEOUT = 360  # s; about 170 s here (compiling the kernels is 110 s of it)


def git_files(repo, *patterns):
    out = subprocess.run(["git", "ls-files", *patterns], cwd=repo, check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """(clone, path of the sdist built from it)."""
    pytest.importorskip("build", reason="the sdist tests need `build` (pip install -e .[test])")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the sdist tests build from a git clone of the checkout")
    tmp = tmp_path_factory.mktemp("sdist")
    clone, dist = tmp / "clone", tmp / "dist"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist),
                        str(clone)], capture_output=True, text=True, timeout=SDIST_TIMEOUT)
    assert r.returncode == 0, \
        f"python -m build --sdist failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    (tarball,) = dist.glob("*.tar.gz")
    return clone, tarball


def sdist_members(tarball):
    """Member paths without the leading 'cnn-VERSION/' folder, files only."""
    with tarfile.open(tarball) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}


def test_sdist_carries_the_kernel_sources_and_templates(sdist):
    clone, tarball = sdist
    members = sdist_members(tarball)
    # What setup.py builds from, what the package serves, what it imports.
    needed = (git_files(clone, "pyx/*.pyx", "pyx/*.pxd", "service/templates")
              | git_files(clone, "cnn/*.py", "service/*.py")
              | {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "CHANGELOG.md"})
    assert any(p.endswith(".pyx") for p in needed) and "service/templates/index.html" in needed
    assert {"pyx/gemm.pxd", "pyx/im2col.pxd", "pyx/maxpool_plane.pxd"} <= needed
    missing = sorted(needed - members)
    assert not missing, f"the sdist lacks {missing}: add them to MANIFEST.in"


def test_sdist_has_no_build_artefacts_or_partial_tests(sdist):
    _, tarball = sdist
    stray = sorted(p for p in sdist_members(tarball)
                   if (p.endswith((".c", ".so", ".pyc", ".html"))
                       and not p.startswith("service/templates/"))
                   or "__pycache__" in p or p.startswith(("build/", "tests/")))
    # .c files made by the Cython that built the sdist would be compiled instead
    # of the .pyx; tests/ alone, without the checkout, cannot run.
    assert not stray, f"the sdist carries {stray}: exclude them in MANIFEST.in"


@pytest.mark.skipif(not os.environ.get("CI"), reason="slow (installs the sdist in a fresh venv, "
                    "compiling the kernels, ~3 min): runs when CI is set")
def test_sdist_installs_with_compiled_kernels(sdist, tmp_path):
    _, tarball = sdist
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    try:
        r = subprocess.run([str(python), "-m", "pip", "install", "-q", str(tarball)],
                           capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip install of the sdist took over {INSTALL_TIMEOUT} s")
    assert r.returncode == 0, f"pip install of the sdist failed:\n{r.stderr[-3000:]}"
    # From tmp_path, so the checkout is not on sys.path; no CNN_BACKEND.
    env = {k: v for k, v in os.environ.items() if k not in ("CNN_BACKEND", "PYTHONPATH")}
    probe = ("import importlib, cnn.backends as b\n"
             "for m in b.KERNEL_MODULES: print(importlib.import_module(m).__file__)\n"
             "print(b.get_backend().__name__)\n")
    r = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    *files, backend = r.stdout.split()
    assert files and all(f.startswith(str(venv)) and f.endswith(".so") for f in files), files
    assert backend == "cnn.backends.cython"
