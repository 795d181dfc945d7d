"""cnn.datasets: image folders, Keras .npz files and IDX folders, detected; the decode cache."""
import os

import numpy as np
import pytest
from PIL import Image

from cnn import datasets
from cnn.data import DataError, Dataset
from cnn.datasets import folder as folder_mod, load_data


def save(path, array, fmt=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt, **kwargs)
    return array


def rgb(rng, h=16, w=16):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def gray(rng, h=16, w=16):
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def make_flat(root, classes=("cat", "dog", "emu"), n=10, kind=rgb, seed=0):
    """root/<class>/<i>.png; returns {relpath: pixels}."""
    rng, pixels = np.random.default_rng(seed), {}
    for c in classes:
        for i in range(n):
            pixels[f"{c}/{i:02d}.png"] = save(root / c / f"{i:02d}.png", kind(rng))
    return pixels


@pytest.fixture
def load(tmp_path):
    def load(path, **kwargs):
        return load_data(path, cache_dir=tmp_path / "cache", **kwargs)
    return load


def test_flat_rgb_folder_shapes_classes_split_and_pixels(tmp_path, load):
    pixels = make_flat(tmp_path / "d")
    ds = load(tmp_path / "d")
    assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
    assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (27, 3, 16, 16)
    assert ds.test_images.shape == (3, 3, 16, 16) and ds.input_shape == (3, 16, 16)
    assert ds.image_shape == (16, 16)
    assert np.bincount(ds.test_labels).tolist() == [1, 1, 1]     # stratified, 10% of each
    assert isinstance(ds.train_images, np.memmap)                # read from the cache
    assert set(ds.train_labels[:9].tolist()) == {0, 1, 2}         # shuffled: --limit 9 works
    # PNG is lossless: the channels-first pixels are the files' own
    originals = {p.tobytes() for p in pixels.values()}
    got = {img.transpose(1, 2, 0).tobytes() for img in np.concatenate([ds.train_images,
                                                                       ds.test_images])}
    assert got == originals
    split = ds.meta["split"]
    assert split["kind"] == "seeded" and split["seed"] == 0 and split["test_images"] == 3
    assert ds.meta["input_shape"] == [3, 16, 16] and ds.meta["channel_order"] == "RGB"


def test_gray_jpeg_and_png_keep_the_idx_layout(tmp_path, load):
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        for i in range(4):
            save(tmp_path / "d" / c / f"{i}.png", gray(rng, 12, 10))
            save(tmp_path / "d" / c / f"{i}.jpg", gray(rng, 12, 10), quality=95)
    ds = load(tmp_path / "d", test_fraction=0.25)
    assert ds.train_images.shape == (12, 12, 10) and ds.test_images.shape == (4, 12, 10)
    assert ds.input_shape == (1, 12, 10) and ds.meta["channel_order"] == "L"


def test_colour_wins_when_any_image_is_colour_and_channels_overrides(tmp_path, load):
    rng = np.random.default_rng(2)
    for c in ("a", "b"):
        for i in range(3):
            save(tmp_path / "d" / c / f"g{i}.png", gray(rng))
        save(tmp_path / "d" / c / "c.png", rgb(rng))
    assert load(tmp_path / "d", test_fraction=0.25).input_shape == (3, 16, 16)
    assert load(tmp_path / "d", test_fraction=0.25, channels=1).input_shape == (1, 16, 16)


def test_mixed_sizes_need_image_size_then_resize_and_centre_crop(tmp_path, load):
    rng = np.random.default_rng(3)
    for c in ("a", "b"):
        save(tmp_path / "d" / c / "small.png", rgb(rng, 16, 16))
        save(tmp_path / "d" / c / "wide.png", rgb(rng, 20, 40))
    with pytest.raises(DataError, match=r"differ in size.*16x16 \(2 images\).*20x40.*image-size"):
        load(tmp_path / "d")
    # a wide image: the short side becomes 8, the centre 8x8 is kept
    wide = np.zeros((8, 24, 3), np.uint8)
    wide[:, 8:16] = 255
    for c in ("a", "b"):
        save(tmp_path / "e" / c / "w1.png", wide)
        save(tmp_path / "e" / c / "w2.png", wide)
    ds = load(tmp_path / "e", image_size=(8, 8), test_fraction=0.5)
    assert ds.train_images.shape == (2, 3, 8, 8) and (ds.train_images == 255).all()


def test_exif_orientation_is_applied(tmp_path, load):
    rng = np.random.default_rng(4)
    exif = Image.Exif()
    exif[0x0112] = 6                                   # rotate 90: stored 8 wide, 4 high
    for c in ("a", "b"):
        for i in range(2):
            save(tmp_path / "d" / c / f"{i}.jpg", rgb(rng, 4, 8), exif=exif.tobytes())
    ds = load(tmp_path / "d", test_fraction=0.5)
    assert ds.image_shape == (8, 4)


def test_train_test_val_folders(tmp_path, load):
    make_flat(tmp_path / "d" / "train", n=4)
    make_flat(tmp_path / "d" / "test", n=2, seed=1)
    make_flat(tmp_path / "d" / "val", classes=("cat", "dog"), n=1, seed=2)
    ds = load(tmp_path / "d")
    assert (len(ds.train_images), len(ds.val_images), len(ds.test_images)) == (12, 2, 6)
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.val_labels.tolist() == [0, 1]
    assert ds.meta["split"]["kind"] == "folders"


def test_bad_files_are_skipped_and_named_or_an_error_when_strict(tmp_path, load):
    make_flat(tmp_path / "d", n=5)
    (tmp_path / "d" / "cat" / "notes.txt").write_text("hello")
    (tmp_path / "d" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    png = (tmp_path / "d" / "emu" / "00.png").read_bytes()
    (tmp_path / "d" / "emu" / "truncated.png").write_bytes(png[:len(png) // 2])
    (tmp_path / "d" / "emu" / ".hidden.png").write_bytes(b"junk")   # ignored, not counted
    (tmp_path / "d" / ".git").mkdir()
    lines = []
    ds = load(tmp_path / "d", test_fraction=0.2, log=lines.append)
    assert len(ds.train_images) + len(ds.test_images) == 15 and ds.meta["skipped"] == 3
    assert "3 of 18 files" in lines[0]
    for name in ("notes.txt", "broken.jpg", "truncated.png"):
        assert name in lines[0]
    assert "emu/truncated.png (corrupt or truncated image" in lines[0]
    assert str(tmp_path) not in lines[0]          # relative paths, each named once
    with pytest.raises(DataError, match=r"notes\.txt.*strict"):
        load(tmp_path / "d", test_fraction=0.2, strict=True)


@pytest.mark.parametrize("layout, message", [
    ({"a/x.png": 1, "b": None}, r"class folder .*b holds no image files"),
    ({"a/x.png": 1}, r"at least 2 class folders, found 1: a"),
    ({"a/x.png": 1, "b/x.txt": 1}, r"class folder .*b holds no image files"),
    ({"train/a/x.png": 1, "train/b/x.png": 1, "test/c/x.png": 1}, r"c have no counterpart"),
    ({"a/x.png": 1, "b/x.jpg": "bad"}, r"class 'b' has no readable training images"),
])
def test_bad_layouts_are_clear_errors(tmp_path, load, layout, message):
    rng = np.random.default_rng(5)
    for rel, what in layout.items():
        p = tmp_path / "d" / rel
        if what is None:
            p.mkdir(parents=True)
        elif what == "bad" or rel.endswith(".txt"):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"junk")
        else:
            save(p, rgb(rng))
    with pytest.raises(DataError, match=message):
        load(tmp_path / "d")


def test_empty_folder_is_a_clear_error(tmp_path, load):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="missing 4 of the 4 IDX files"):
        load(tmp_path / "d")


def test_the_split_is_recorded_and_reproducible(tmp_path, load):
    make_flat(tmp_path / "d", n=10)
    a = load(tmp_path / "d", seed=7, test_fraction=0.3)
    b = load_data(tmp_path / "d", seed=7, test_fraction=0.3, cache_dir=tmp_path / "other")
    c = load(tmp_path / "d", seed=8, test_fraction=0.3)
    assert a.meta["split"]["test_sha256"] == b.meta["split"]["test_sha256"]
    assert np.array_equal(a.test_images, b.test_images)
    assert a.meta["split"]["test_sha256"] != c.meta["split"]["test_sha256"]
    assert a.meta["split"]["test_fraction"] == 0.3 and len(a.test_images) == 9


def test_second_load_decodes_nothing_and_a_changed_file_decodes_again(tmp_path, load,
                                                                     monkeypatch):
    make_flat(tmp_path / "d", n=3)
    first = load(tmp_path / "d", test_fraction=0.34)

    def boom(*args, **kwargs):
        raise AssertionError("decoded although cached")
    monkeypatch.setattr(folder_mod, "decode_image", boom)
    monkeypatch.setattr(folder_mod, "probe_image", boom)
    second = load(tmp_path / "d", test_fraction=0.34)
    assert np.array_equal(first.train_images, second.train_images)
    assert second.meta["cache"] == first.meta["cache"]
    f = tmp_path / "d" / "cat" / "00.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although cached"):
        load(tmp_path / "d", test_fraction=0.34)
    # the failed build left no entry, and no half-written one
    entries = os.listdir(tmp_path / "cache")
    assert entries == [os.path.basename(first.meta["cache"])]


def test_npz_in_the_keras_layout(tmp_path, load):
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "c.npz", x_train=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
             y_train=np.array([[0], [1], [2], [0], [1], [2]]),
             x_test=rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), y_test=[0, 1, 2],
             class_names=np.array(["x", "y", "z"]))
    ds = load(tmp_path / "c.npz")
    assert ds.train_images.shape == (6, 3, 8, 8) and ds.input_shape == (3, 8, 8)
    assert ds.train_labels.tolist() == [0, 1, 2, 0, 1, 2] and ds.class_names == ("x", "y", "z")
    with np.load(tmp_path / "c.npz") as f:
        assert np.array_equal(ds.train_images[2], f["x_train"][2].transpose(2, 0, 1))
    np.savez(tmp_path / "g.npz", x_train=np.zeros((2, 5, 5), np.uint8), y_train=[0, 1],
             x_test=np.zeros((1, 5, 5), np.uint8), y_test=[1])
    g = load(tmp_path / "g.npz")
    assert g.train_images.shape == (2, 5, 5) and g.class_names == ("0", "1")
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(DataError, match="missing y_train, x_test, y_test"):
        load(tmp_path / "bad.npz")


def test_idx_folders_load_as_before(make_idx_dir, load):
    folder = make_idx_dir()
    ds = load(folder)
    assert isinstance(ds, Dataset) and ds.train_images.shape == (40, 28, 28)
    assert datasets.input_shape_of(ds) == (1, 28, 28) and datasets.record_of(ds) == {}


# ------------------------------------------------- colour through Normalizer and augment


def test_normalizer_per_channel_matches_numpy_and_keeps_grayscale_scalar():
    from cnn.data import Normalizer
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (20, 3, 5, 4), dtype=np.uint8)
    x[:, 1] //= 2                                       # channels really differ
    n = Normalizer.fit(x)
    f = x / 255.0
    np.testing.assert_allclose(n.mean, f.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(n.std, f.std(axis=(0, 2, 3)), rtol=1e-12)
    out = n(x)
    expected = (f - f.mean(axis=(0, 2, 3))[:, None, None]) / f.std(axis=(0, 2, 3))[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(n(f.astype(np.float32)), out, rtol=1e-5, atol=1e-5)
    assert Normalizer.from_dict(n.to_dict()) == n and len(n.to_dict()["mean"]) == 3
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\)"):
        n(x[:, 0])
    g = Normalizer.fit(x[:, :1])                        # one channel: scalars, as before
    assert isinstance(g.mean, float) and set(g.to_dict()) == {"mean", "std"}


def test_augment_shifts_colour_batches_with_a_fill_per_channel():
    from cnn.data import augment
    batch = np.ones((64, 3, 6, 6), np.float32)
    out = augment(batch, np.random.default_rng(0), shift=2, flip=False, fill=(-1.0, -2.0, -3.0))
    border = out != 1.0
    assert border.any()
    for c, value in enumerate((-1.0, -2.0, -3.0)):
        assert set(np.unique(out[:, c][border[:, c]])) == {value}
    assert (border[:, 0] == border[:, 2]).all()        # the same shift for every channel
    with pytest.raises(ValueError, match="one value per channel"):
        augment(batch, np.random.default_rng(0), fill=(0.0, 0.0))


# ---------------------------------------------------------------- python -m cnn.train


def run_train(cwd, *args):
    import subprocess
    import sys

    from tests.test_train import env
    return subprocess.run([sys.executable, "-m", "cnn.train", "--epochs", "1", "--progress",
                           "lines", "--arch", "conv4k3p1-relu-maxpool2-flatten-dense3",
                           *map(str, args)], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=120)


def test_train_on_an_rgb_folder_records_the_data_in_the_weights_file(tmp_path):
    from cnn.io import read_model_file
    make_flat(tmp_path / "d", n=12)
    proc = run_train(tmp_path, "--data-dir", tmp_path / "d", "--cache-dir", tmp_path / "c",
                     "--out", tmp_path / "m.npz", "--augment")
    assert proc.returncode == 0, proc.stderr
    meta, _ = read_model_file(tmp_path / "m.npz")
    assert meta["input_shape"] == [3, 16, 16] and meta["class_names"] == ["cat", "dog", "emu"]
    assert len(meta["normalization"]["mean"]) == 3
    data = meta["summary"]["data"]
    assert data["channel_order"] == "RGB" and data["resize"].startswith("exif")
    assert data["split"]["kind"] == "seeded" and data["split"]["test_images"] == 3
    assert data["val_fraction"] == 0.1 and data["val_images"] == 3
    again = load_data(tmp_path / "d", cache_dir=tmp_path / "c")
    assert data["split"]["test_sha256"] == again.meta["split"]["test_sha256"]
    # the colour model loads, and predicts its held-out images as training scored them
    from cnn.io import load_model
    model = load_model(tmp_path / "m.npz")
    proba = model.predict_proba(again.test_images)          # uint8 (N, 3, 16, 16)
    assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    norm = meta["normalization"]
    x = (again.test_images / np.float32(255) - np.asarray(norm["mean"], np.float32)
         .reshape(3, 1, 1)) / np.asarray(norm["std"], np.float32).reshape(3, 1, 1)
    assert np.allclose(model.prepare(again.test_images), x, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--image-size", "0x3"], "--image-size: expected HxW"),
    (["--test-fraction", "0"], "--test-fraction: expected a number in (0, 1)"),
    (["--channels", "2"], "--channels: invalid choice"),
])
def test_train_bad_data_flags(tmp_path, args, message):
    proc = run_train(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_train_mixed_sizes_and_image_size_on_idx_are_clear_errors(tmp_path, make_idx_dir,
                                                                 capsys):
    from cnn.train import main
    rng = np.random.default_rng(8)
    for c in ("a", "b"):
        save(tmp_path / "d" / c / "1.png", rgb(rng, 16, 16))
        save(tmp_path / "d" / c / "2.png", rgb(rng, 10, 12))
    assert main(["--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "10x12 (2 images)" in capsys.readouterr().err
    idx = make_idx_dir()
    assert main(["--data-dir", str(idx), "--image-size", "8x8"]) == 2
    assert "--image-size: applies to image folders" in capsys.readouterr().err


# ------------------------------------------------------------- python -m cnn.evaluate


def test_evaluate_a_folder_model_on_exactly_the_held_out_images(tmp_path, capsys):
    import json

    from cnn.evaluate import main
    from cnn.io import read_model_file
    make_flat(tmp_path / "d", n=12, kind=gray)
    proc = run_train(tmp_path, "--data-dir", tmp_path / "d", "--cache-dir", tmp_path / "c",
                     "--out", tmp_path / "m.npz", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    summary = read_model_file(tmp_path / "m.npz")[0]["summary"]

    def evaluate():
        code = main([str(tmp_path / "m.npz"), "--data-dir", str(tmp_path / "d"),
                     "--cache-dir", str(tmp_path / "c"), "--json"])
        return code, capsys.readouterr()
    code, out = evaluate()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["total"] == summary["data"]["split"]["test_images"] == 3
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert report["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert len(os.listdir(tmp_path / "c")) == 1         # the training run's cache entry
    save(tmp_path / "d" / "cat" / "new.png", gray(np.random.default_rng(9)))
    code, out = evaluate()
    assert code == 2 and "cannot be reproduced" in out.err


def test_decoding_in_worker_processes_gives_the_same_cache(tmp_path, monkeypatch):
    make_flat(tmp_path / "d", n=6)
    (tmp_path / "d" / "dog" / "broken.png").write_bytes(b"junk")
    inline = load_data(tmp_path / "d", cache_dir=tmp_path / "a", test_fraction=0.2)
    monkeypatch.setattr(folder_mod, "PARALLEL_MIN", 1)
    monkeypatch.setattr(folder_mod, "CHUNK", 4)
    monkeypatch.setattr(folder_mod, "available_cores", lambda: 2)
    forked = load_data(tmp_path / "d", cache_dir=tmp_path / "b", test_fraction=0.2)
    assert np.array_equal(inline.train_images, forked.train_images)
    assert np.array_equal(inline.test_labels, forked.test_labels)
    assert forked.meta["skipped"] == 1


def test_too_little_cache_space_is_refused_before_decoding(tmp_path, load, monkeypatch):
    import shutil
    make_flat(tmp_path / "d", n=3)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(DataError, match=r"cache folder .* MiB free.*--cache-dir"):
        load(tmp_path / "d", test_fraction=0.34)


def test_temporary_entries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    from cnn.datasets import cache
    old, live = tmp_path / ".abc.1.tmp", tmp_path / ".abc.2.tmp"
    for d in (old, live):
        d.mkdir()
        (d / "raw.npy").write_bytes(b"x")
    past = os.path.getmtime(old) - 2 * cache.STALE_SECONDS
    for p in (old / "raw.npy", old):
        os.utime(p, (past, past))
    assert cache.remove_stale(tmp_path) == 1
    assert not old.exists() and live.exists()


def test_train_validates_on_the_folders_own_val_split(tmp_path, capsys):
    from cnn.io import read_model_file
    from cnn.train import main
    make_flat(tmp_path / "d" / "train", n=4, kind=gray)
    make_flat(tmp_path / "d" / "test", n=1, kind=gray, seed=1)
    make_flat(tmp_path / "d" / "val", n=1, kind=gray, seed=2)
    code = main(["--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "m.npz"), "--epochs", "1", "--progress", "lines",
                 "--arch", "conv4k3p1-relu-maxpool2-flatten-dense3"])
    assert code == 0, capsys.readouterr().err
    assert "12 train / 3 validation / 3 test" in capsys.readouterr().out
    meta, _ = read_model_file(tmp_path / "m.npz")
    assert meta["input_shape"] == [1, 16, 16]
    assert meta["summary"]["data"]["val_fraction"] is None
    assert meta["summary"]["data"]["split"]["kind"] == "folders"


def test_augment_shift_is_a_padded_random_crop_of_the_chosen_size(tmp_path):
    from cnn.io import read_model_file
    make_flat(tmp_path / "d", n=12)
    proc = run_train(tmp_path, "--data-dir", tmp_path / "d", "--cache-dir", tmp_path / "c",
                     "--out", tmp_path / "m.npz", "--augment", "--shift", "4")
    assert proc.returncode == 0, proc.stderr
    summary = read_model_file(tmp_path / "m.npz")[0]["summary"]
    assert summary["augment"] == "both" and summary["shift"] == 4
    proc = run_train(tmp_path, "--data-dir", tmp_path / "d", "--cache-dir", tmp_path / "c",
                     "--out", tmp_path / "n.npz", "--augment", "shift", "--shift", "16")
    assert proc.returncode == 2 and "--shift 16: must be smaller than the images (16x16)" \
        in proc.stderr
    proc = run_train(tmp_path, "--shift", "-1")
    assert proc.returncode == 2 and "--shift: expected an integer >= 0" in proc.stderr
