"""cnn: convolutional networks on the CPU with Cython kernels.

``cnn.load_model(path)`` loads a weights file written by ``python -m cnn.train``,
``cnn.export_onnx(model, path)`` writes it as ONNX;
``cnn.backends.get_backend()`` gives the kernels; ``set_num_threads`` sets how
many threads they use by default.
"""
import os

# OpenMP threads that finish a parallel loop wait for the next one. Spinning
# (libgomp's default) wins microseconds on an idle machine, but when another
# process holds a core the spinning thread takes the time slice the working
# thread needs: a training step measured 10 ms sleeping and up to 200 ms
# spinning on a busy 2-core machine. libgomp reads this when it loads, which
# is when the first kernel module is imported, after this line. A value the
# user set is kept.
OMP_WAIT_POLICY_DEFAULTED = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cnn._threads import get_num_threads, set_num_threads
from cnn.backends import get_backend
from cnn.io import load_model


def __getattr__(name):
    # cnn.export_onnx is imported on first use: importing cnn.export here would
    # make ``python -m cnn.export`` find its module already loaded (runpy warns).
    if name == "export_onnx":
        from cnn.export import export_onnx
        return export_onnx
    raise AttributeError(f"module 'cnn' has no attribute {name!r}")


def _version():
    # One version number: pyproject.toml's, as the installed metadata records it.
    # A source tree used without installing has no metadata: read the file.
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("cnn")
    except PackageNotFoundError:
        import re
        from pathlib import Path
        try:
            text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        except OSError:
            return "0+unknown"
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return found.group(1) if found else "0+unknown"


__version__ = _version()
__all__ = ["export_onnx", "get_backend", "get_num_threads", "load_model", "set_num_threads",
           "__version__"]
