"""Fixtures for the HTTP service: tiny models (built in-process), app, client.

``app``/``client``: a fresh app per test serving ``tiny`` (a random-weight
Conv-ReLU-Pool-Dense network with the Fashion-MNIST classes) from a temporary
models folder. ``make_app(models_dir, **settings)`` builds apps with other
settings; ``models_dir`` is that test's folder (add files to it before
calling ``make_app``).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnn.architectures import build_architecture
from cnn.data import FASHION_MNIST_CLASSES
from cnn.io import load_model, save_model

REPO = Path(__file__).resolve().parents[2]
TINY_ARCH = "conv4k3p1-relu-maxpool2-flatten-dense10"


def build_tiny(seed=0, arch=TINY_ARCH):
    model = build_architecture(arch, class_names=FASHION_MNIST_CLASSES)
    model.build(seed=seed)
    model.normalization = {"mean": 0.286, "std": 0.353}
    return model


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def tiny_weights(weights_dir):
    """A weights file of the tiny model (random weights, seed 0)."""
    path = weights_dir / "tiny.npz"
    save_model(path, build_tiny(seed=0),
               summary={"arch": TINY_ARCH, "test_accuracy": 0.5,
                        "trained_at": "2024-01-02T03:04:05+00:00", "epochs": 1})
    return path


@pytest.fixture(scope="session")
def other_weights(weights_dir):
    """A second, different model (other seed, 8 filters)."""
    path = weights_dir / "other.npz"
    save_model(path, build_tiny(seed=1, arch="conv8k3p1-relu-maxpool2-flatten-dense10"))
    return path


@pytest.fixture(scope="session")
def trained_weights(weights_dir):
    """A model really trained by ``python -m cnn.train`` (a few seconds); None
    when the Fashion-MNIST files are not installed."""
    if not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get(
            "CNN_DATA_DIR"):
        return None
    out = weights_dir / "trained" / "trained.npz"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "cnn.train", "--arch",
                    "conv8k3p1-relu-maxpool2-flatten-dense10", "--limit", "600", "--epochs",
                    "1", "--out", str(out), "--progress", "lines"], env=env, check=True,
                   cwd=str(REPO), stdout=subprocess.DEVNULL)
    return out


@pytest.fixture
def tiny_model(tiny_weights):
    """The reference: the same weights loaded directly with cnn."""
    return load_model(tiny_weights, threads=1)


@pytest.fixture
def models_dir(tmp_path, tiny_weights):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_weights, folder / "tiny.npz")
    return folder


@pytest.fixture(scope="session")
def _blas_controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


@pytest.fixture(autouse=True)
def _restore_blas_threads(_blas_controller):
    """create_app caps BLAS threads process-wide; give other tests their setting back."""
    libs = [(lib, lib.get_num_threads()) for lib in _blas_controller.lib_controllers]
    yield
    for lib, n in libs:
        lib.set_num_threads(n)


@pytest.fixture
def make_app():
    from service import create_app

    def make(models_dir, **settings):
        config = {"TESTING": True, "CNN_MODEL_DIR": str(models_dir), "CNN_THREADS": 1}
        config.update(settings)
        return create_app(config)
    return make


@pytest.fixture
def app(make_app, models_dir):
    return make_app(models_dir)


@pytest.fixture
def client(app):
    return app.test_client()
