"""scripts/idx_to_folder.py: an IDX data set written as an image folder reads back
as the same images and labels (pixels lossless, label order kept)."""
import subprocess
import sys

import numpy as np

from cnn.data import load_dataset
from cnn.datasets import load_data
from tests.conftest import make_idx_folder
from tests.service.servers import ROOT


def pairs(images, labels):
    return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))


def test_an_idx_set_written_as_a_folder_reads_back_the_same(tmp_path):
    idx = make_idx_folder(tmp_path / "idx", n_train=30, n_test=20, num_classes=4)
    out = tmp_path / "folder"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "idx_to_folder.py"), str(out),
                          "--data-dir", str(idx)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert "wrote 50 PNG files" in run.stdout
    folders = sorted(p.name for p in (out / "train").iterdir())
    assert [f[:3] for f in folders] == ["00_", "01_", "02_", "03_"]
    a, b = load_dataset(str(idx)), load_data(out, cache_dir=tmp_path / "cache")
    assert b.input_shape == (1, 28, 28) and len(b.class_names) == 4
    assert pairs(b.test_images, b.test_labels) == pairs(a.test_images, a.test_labels)
    train_b = pairs(b.train_images, b.train_labels) + (
        pairs(b.val_images, b.val_labels) if b.val_images is not None else [])
    assert sorted(train_b) == pairs(a.train_images, a.train_labels)
    # OUT is never overwritten
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "idx_to_folder.py"), str(out),
                            "--data-dir", str(idx)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert again.returncode == 2 and "exists and is not an empty folder" in again.stderr


def test_folder_names_keep_the_label_order_and_are_safe():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from idx_to_folder import folder_names
    finally:
        sys.path.pop(0)
    names = folder_names(["T-shirt/top", "Trouser", "Ankle boot"] + [f"c{k}" for k in range(9)])
    assert names[:3] == ["00_T-shirt_top", "01_Trouser", "02_Ankle_boot"]
    assert names == sorted(names) and len(set(names)) == 12
    assert not np.any([("/" in n or " " in n) for n in names])
