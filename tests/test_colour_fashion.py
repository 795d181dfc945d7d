"""scripts/colour_fashion.py: Colour Fashion-MNIST, a 32x32 RGB set in the Keras .npz
layout, made from the IDX files (labels kept, colours independent of them, seeded)."""
import dataclasses
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from cnn.data import DEFAULT_DATA_DIR, FASHION_MNIST_CLASSES, load_dataset
from cnn.datasets import load_data
from tests.conftest import make_idx_folder
from tests.service.servers import ROOT

SCRIPT = ROOT / "scripts" / "colour_fashion.py"
_spec = importlib.util.spec_from_file_location("colour_fashion", SCRIPT)
colour_fashion = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colour_fashion)

needs_fashion = pytest.mark.skipif(not os.path.isdir(DEFAULT_DATA_DIR),
                                   reason=f"Fashion-MNIST is not installed at {DEFAULT_DATA_DIR}")


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@needs_fashion
def test_the_cli_writes_a_keras_npz_that_cnn_datasets_reads(tmp_path):
    out = tmp_path / "colour.npz"
    result = run(out, "--limit", 40, "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert "wrote 40 train and 40 test 32x32 RGB images" in result.stdout
    assert os.listdir(tmp_path) == ["colour.npz"]          # no temporary file left
    fashion = load_dataset(DEFAULT_DATA_DIR)
    with np.load(out) as f:
        assert sorted(f.files) == ["class_names", "x_test", "x_train", "y_test", "y_train"]
        assert f["x_train"].shape == f["x_test"].shape == (40, 32, 32, 3)
        assert f["x_train"].dtype == f["x_test"].dtype == np.uint8
        np.testing.assert_array_equal(f["y_train"], fashion.train_labels[:40])
        np.testing.assert_array_equal(f["y_test"], fashion.test_labels[:40])
        assert tuple(f["class_names"]) == tuple(FASHION_MNIST_CLASSES)
        x_train = f["x_train"]
    data = load_data(out)
    assert data.input_shape == (3, 32, 32)
    assert data.class_names == tuple(FASHION_MNIST_CLASSES)
    np.testing.assert_array_equal(data.train_images, x_train.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(data.train_labels, fashion.train_labels[:40])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    idx = make_idx_folder(tmp_path / "idx", n_train=30, n_test=10)
    paths = [tmp_path / name for name in ("a.npz", "b.npz", "c.npz")]
    for path, seed in zip(paths, (5, 5, 6)):
        assert colour_fashion.main([str(path), "--seed", str(seed), "--data-dir", str(idx)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with np.load(paths[0]) as a, np.load(paths[2]) as c:
        assert (a["x_train"] != c["x_train"]).mean() > 0.9
        np.testing.assert_array_equal(a["y_train"], c["y_train"])


def garment_fit(rgb, garment):
    """(R^2, contrast, (dy, dx)) of the best fit rgb[window] ~ bg + (fg - bg) * garment/255
    over every offset of the garment in the canvas."""
    H, W = garment.shape
    alpha = garment.reshape(-1).astype(np.float64) / 255
    design = np.stack([np.ones_like(alpha), alpha], axis=1)
    best = (-1.0, 0.0, None)
    for dy in range(rgb.shape[0] - H + 1):
        for dx in range(rgb.shape[1] - W + 1):
            window = rgb[dy:dy + H, dx:dx + W].reshape(-1, 3).astype(np.float64)
            coef, *_ = np.linalg.lstsq(design, window, rcond=None)
            residual = ((window - design @ coef) ** 2).sum()
            r2 = 1 - residual / ((window - window.mean(0)) ** 2).sum()
            if r2 > best[0]:
                best = (r2, float(np.linalg.norm(coef[1])), (dy, dx))
    return best


@needs_fashion
def test_each_image_is_its_garment_in_two_contrasting_colours_at_a_random_offset():
    fashion = load_dataset(DEFAULT_DATA_DIR)
    garments = fashion.train_images[:30]
    rgb = colour_fashion.colourise(garments, np.random.default_rng(0))
    fits = [garment_fit(image, garment) for image, garment in zip(rgb, garments)]
    assert min(r2 for r2, _, _ in fits) > 0.75, fits
    others = [garment_fit(image, garment)[0]        # another image's garment fits worse
              for image, garment in zip(rgb, np.roll(garments, 1, axis=0))]
    assert all(r2 > other for (r2, _, _), other in zip(fits, others)), (fits, others)
    assert min(contrast for _, contrast, _ in fits) > 0.8 * colour_fashion.MIN_CONTRAST, fits
    assert len({offset for _, _, offset in fits}) > 5         # offsets vary
    # the canvas outside the garment's window is the background colour plus noise
    r2, _, (dy, dx) = fits[0]
    outside = np.ones((32, 32), bool)
    outside[dy:dy + 28, dx:dx + 28] = False
    if outside.any():
        assert rgb[0][outside].std(axis=0).max() < 2 * colour_fashion.NOISE


def test_colours_are_independent_of_the_labels(tmp_path):
    ds = load_dataset(make_idx_folder(tmp_path / "idx", n_train=40, n_test=10))
    shuffled = dataclasses.replace(ds, train_labels=ds.train_labels[::-1].copy())
    a, b = colour_fashion.build(ds, seed=1), colour_fashion.build(shuffled, seed=1)
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
    np.testing.assert_array_equal(b["y_train"], ds.train_labels[::-1])


def test_foreground_and_background_always_contrast():
    bg, fg = colour_fashion.colour_pairs(np.random.default_rng(0), 20_000)
    assert bg.shape == fg.shape == (20_000, 3)
    assert np.linalg.norm(fg - bg, axis=1).min() >= colour_fashion.MIN_CONTRAST
    assert 0 <= min(bg.min(), fg.min()) and max(bg.max(), fg.max()) <= 255


@pytest.mark.parametrize("args, words", [
    (["--limit", "0"], ["--limit", "positive", "0"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--data-dir", "/nonexistent/idx"], ["/nonexistent/idx", "does not exist"]),
])
def test_bad_arguments_are_named(tmp_path, args, words):
    result = run(tmp_path / "x.npz", *args)
    assert result.returncode == 2
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.npz").exists()


def test_out_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "out.npz").mkdir()
    result = run(tmp_path / "out.npz")
    assert result.returncode == 2 and "is a folder" in result.stderr
