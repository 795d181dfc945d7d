"""scripts/sample_images.py: test-set images written as PNG files named by class,
losslessly, so the README's curl example has files to send."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnn.data import DEFAULT_DATA_DIR, load_dataset
from cnn.images import decode_image
from tests.conftest import make_idx_folder
from tests.service.servers import ROOT

SCRIPT = ROOT / "scripts" / "sample_images.py"
STEMS = ["t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
         "bag", "ankle_boot"]


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def pixels(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


@pytest.fixture
def test_files_only(tmp_path):
    """An IDX folder of 30 random 28x28 test images, 10 Fashion-MNIST classes, and
    no training files (sampling needs only the test split)."""
    folder = make_idx_folder(tmp_path / "idx", n_test=30)
    for path in folder.glob("train-*"):
        path.unlink()
    return folder


def test_one_image_per_class_named_by_class(tmp_path, test_files_only):
    out = tmp_path / "samples"
    proc = run(out, "--data-dir", test_files_only)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in STEMS)
    assert "wrote 10 test images" in proc.stdout
    assert f"-F file=@{out}/ankle_boot.png -F file=@{out}/pullover.png" in proc.stdout
    test = load_dataset(test_files_only, test_only=True)
    for label, stem in enumerate(STEMS):
        first = np.flatnonzero(test.test_labels == label)[0]
        np.testing.assert_array_equal(pixels(out / f"{stem}.png"), test.test_images[first])
        np.testing.assert_array_equal(decode_image(out / f"{stem}.png", invert=False),
                                      test.test_images[first])


@pytest.mark.skipif(not os.path.isdir(DEFAULT_DATA_DIR),
                    reason=f"Fashion-MNIST is not installed at {DEFAULT_DATA_DIR}")
def test_fashion_mnist_samples_reach_a_model_as_the_test_pixels(tmp_path):
    """The default run, then the decode the service and cnn.predict apply (invert=auto:
    light objects on black are not inverted): exactly the test set's pixels."""
    out = tmp_path / "samples"
    proc = run(out)
    assert proc.returncode == 0, proc.stderr
    test = load_dataset(DEFAULT_DATA_DIR, test_only=True)
    for label, stem in enumerate(STEMS):
        first = np.flatnonzero(test.test_labels == label)[0]
        np.testing.assert_array_equal(decode_image(out / f"{stem}.png"), test.test_images[first])


def test_count_and_absent_classes(tmp_path):
    idx = make_idx_folder(tmp_path / "idx", n_test=12, num_classes=4)   # 3 images of 0-3
    out = tmp_path / "samples"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = run(out, "--data-dir", idx, "--count", 5)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["notes.txt"] + [f"{s}{n}.png" for s in STEMS[:4]
                                            for n in ("", "_2", "_3")])
    assert (out / "notes.txt").read_text() == "mine"
    assert "no test images of: Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot" in proc.stdout
    test = load_dataset(idx)
    np.testing.assert_array_equal(pixels(out / "pullover_3.png"),
                                  test.test_images[np.flatnonzero(test.test_labels == 2)[2]])


def test_colour_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    y = np.array([0, 1, 1, 0, 1, 0])
    npz = tmp_path / "colour.npz"
    np.savez(npz, x_train=x, y_train=y, x_test=x, y_test=y, class_names=np.array(["cat", "Dog!"]))
    proc = run(tmp_path / "out", "--data-dir", npz)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(pixels(tmp_path / "out" / "cat.png"), x[0])
    np.testing.assert_array_equal(pixels(tmp_path / "out" / "dog.png"), x[1])


@pytest.mark.parametrize("args, words", [
    (["--count", "0"], ["--count", "from 1 to 100", "0"]),
    (["--count", "101"], ["--count", "101"]),
    (["--data-dir", "/nonexistent"], ["--data-dir", "/nonexistent", "does not exist"]),
])
def test_bad_arguments(tmp_path, args, words):
    proc = run(tmp_path / "out", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file(tmp_path, test_files_only):
    (tmp_path / "file").write_text("x")
    proc = run(tmp_path / "file", "--data-dir", test_files_only)
    assert proc.returncode == 2 and "is not a folder" in proc.stderr, proc.stderr


def test_class_names_that_clash_get_their_label():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from sample_images import file_stems
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert file_stems(["Ankle boot", "T-shirt/top"]) == ["ankle_boot", "t_shirt_top"]
    assert file_stems(["a b", "a-b", "c"]) == ["0_a_b", "1_a_b", "2_c"]
    assert file_stems(["0", "1"]) == ["0", "1"]
    assert file_stems(["猫", "dog"]) == ["0", "1_dog"]
