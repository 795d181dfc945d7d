"""Weights files: save/load round trips, every kind of bad file, atomic writes."""
import json
import os
import stat
import zipfile

import numpy as np
import pytest

import cnn
from cnn.architectures import build_architecture
from cnn.io import (FORMAT, VERSION, ModelFileError, atomic_write, load_model,
                    read_model_file, save_model)

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]
NORM = {"mean": 0.2860, "std": 0.3530}


def trained_like(arch="convnet_bn", seed=0, dtype=np.float32):
    """A model whose weights and buffers are all non-trivial."""
    model = build_architecture(arch, 10, class_names=CLASSES).build(seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for key, value in model.state().items():
        if key.endswith(("running_var", "gamma")):
            value[...] = rng.uniform(0.5, 2.0, value.shape)
        else:
            value += rng.normal(0, 0.05, value.shape).astype(value.dtype)
    model.normalization = dict(NORM)
    return model


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).integers(0, 256, (25, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, model) of a saved convnet_bn."""
    path = tmp_path_factory.mktemp("saved") / "model.npz"
    model = trained_like()
    save_model(path, model, summary={"test_accuracy": 0.9, "epochs": 3})
    return path, model


def test_save_load_predict_identical(saved, pixels):
    path, model = saved
    loaded = load_model(path, backend="cython")
    assert loaded.backend == "cython"
    np.testing.assert_array_equal(loaded.predict_proba(pixels), model.predict_proba(pixels))
    np.testing.assert_array_equal(loaded.predict(pixels), model.predict(pixels))
    assert loaded.config() == model.config()
    assert loaded.class_names == tuple(CLASSES)
    assert loaded.normalization == NORM
    assert loaded.summary_info == {"test_accuracy": 0.9, "epochs": 3}
    assert loaded.num_params() == model.num_params()
    for key, value in model.state().items():
        np.testing.assert_array_equal(loaded.state()[key], value, err_msg=key)
        assert loaded.state()[key].dtype == np.float32
    assert cnn.load_model is load_model


def test_load_with_python_backend_gives_same_predictions(saved, pixels):
    path, model = saved
    loaded = load_model(path, backend="python")
    assert loaded.backend == "python"
    ref = model.predict_proba(pixels)
    np.testing.assert_allclose(loaded.predict_proba(pixels), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(pixels), ref.argmax(axis=1))


def test_file_contents(saved):
    path, model = saved
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert "__meta__.npy" in names
    assert {f"param/{k}.npy" for k in model.state()} <= names
    meta, arrays = read_model_file(path)
    assert meta["format"] == FORMAT and meta["version"] == VERSION
    assert meta["architecture"] == model.config()
    assert meta["class_names"] == CLASSES and meta["normalization"] == NORM
    assert set(arrays) == {f"param/{k}" for k in model.state()}
    # no pickles: plain numpy loading with allow_pickle=False reads everything
    with np.load(path, allow_pickle=False) as npz:
        json.loads(str(npz["__meta__"]))


def test_float64_model_round_trip(tmp_path, pixels):
    model = trained_like("lenet5", dtype=np.float64)
    save_model(tmp_path / "m64.npz", model)
    loaded = load_model(tmp_path / "m64.npz")
    assert loaded.state()["0.w"].dtype == np.float64
    np.testing.assert_array_equal(loaded.predict_proba(pixels), model.predict_proba(pixels))


def test_checkpoint_members_do_not_disturb_loading(tmp_path, pixels):
    model = trained_like("lenet5")
    opt_arrays = {"m/0.w": np.ones((6, 1, 5, 5), np.float32)}
    save_model(tmp_path / "c.ckpt", model, checkpoint={"epoch": 2, "history": []},
               optimizer_arrays=opt_arrays)
    meta, arrays = read_model_file(tmp_path / "c.ckpt")
    assert meta["checkpoint"] == {"epoch": 2, "history": []}
    np.testing.assert_array_equal(arrays["opt/m/0.w"], opt_arrays["m/0.w"])
    loaded = load_model(tmp_path / "c.ckpt")
    np.testing.assert_array_equal(loaded.predict_proba(pixels), model.predict_proba(pixels))


# --------------------------------------------------------------------------- bad files


def good_bytes(tmp_path, arch="lenet5"):
    path = tmp_path / "good.npz"
    save_model(path, trained_like(arch))
    return path.read_bytes()


def assert_model_file_error(path, *words, read_too=True):
    """load_model (and read_model_file, which checks the archive and the metadata
    but not the architecture) raise ModelFileError, and nothing else."""
    for fn in (load_model, read_model_file) if read_too else (load_model,):
        with pytest.raises(ModelFileError) as info:
            fn(path)
        message = str(info.value)
        assert isinstance(info.value, ValueError)
        for word in words:
            assert word in message, (word, message)
    return message


def write_npz(path, meta=None, **arrays):
    if meta is not None:
        arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


def test_truncated_file(tmp_path):
    data = good_bytes(tmp_path)
    bad = tmp_path / "truncated.npz"
    for n in sorted({1, 3, 4, 30, 100, len(data) // 3, len(data) // 2, len(data) - 100,
                     len(data) - 22, len(data) - 1}):
        bad.write_bytes(data[:n])
        assert_model_file_error(bad, "truncated.npz")
    bad.write_bytes(data[:len(data) // 2])
    assert_model_file_error(bad, "corrupt, truncated or another format")


def test_corrupt_file_bytes_flipped_in_the_middle(tmp_path):
    data = bytearray(good_bytes(tmp_path))
    bad = tmp_path / "corrupt.npz"
    for start in (len(data) // 2, len(data) // 3, 2 * len(data) // 3):
        flipped = bytearray(data)
        for i in range(start, start + 8):
            flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        assert_model_file_error(bad, "corrupt.npz", "corrupt")


def test_single_byte_flips_in_zip_and_npy_headers(tmp_path):
    """Flip each byte of the ZIP structure (local headers, central directory, end
    record) and of every .npy header: each file must load fine or raise
    ModelFileError (zipfile alone raises BadZipFile, NotImplementedError,
    RuntimeError, ... for these)."""
    model = build_architecture("flatten-dense10", input_shape=(1, 2, 2)).build(seed=0)
    path = tmp_path / "tiny.npz"
    save_model(path, model)
    data = path.read_bytes()
    positions = set()
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        cd_start = zf.start_dir
    positions.update(range(cd_start, len(data)))                 # central dir + end record
    for info in infos:
        local = info.header_offset
        header_len = 30 + len(info.filename.encode()) + len(info.extra)
        positions.update(range(local, local + header_len))       # local header
        positions.update(range(local + header_len, local + header_len + 128, 2))  # npy header
    bad = tmp_path / "flipped.npz"
    outcomes = {"loaded": 0, "ModelFileError": 0}
    for i in sorted(p for p in positions if p < len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            load_model(bad)
            outcomes["loaded"] += 1
        except ModelFileError:
            outcomes["ModelFileError"] += 1
        except Exception as exc:   # pragma: no cover - the failure being tested
            pytest.fail(f"flipping byte {i} of {len(data)} gave {type(exc).__name__}: {exc}")
    assert outcomes["ModelFileError"] > len(positions) // 2, outcomes


def test_random_bytes_file(tmp_path):
    bad = tmp_path / "random.npz"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    assert_model_file_error(bad, "random.npz", "not a readable cnn weights file")
    bad.write_bytes(b"PK\x03\x04" + bytes(1000))                # zip magic, then nothing
    assert_model_file_error(bad, "random.npz")


def test_empty_file(tmp_path):
    bad = tmp_path / "empty.npz"
    bad.write_bytes(b"")
    assert_model_file_error(bad, "empty.npz")


def test_text_and_npy_files(tmp_path):
    text = tmp_path / "weights.json"
    text.write_text('{"format": "cnn-weights"}')
    assert_model_file_error(text, "weights.json")
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros((3, 3), np.float32))
    assert_model_file_error(npy, "array.npy", "not a cnn weights file")


def test_npz_without_meta(tmp_path):
    bad = write_npz(tmp_path / "plain.npz", w=np.zeros(3))
    assert_model_file_error(bad, "plain.npz", "no __meta__")


def test_npz_with_bad_meta(tmp_path):
    good = trained_like("lenet5")
    meta = json.loads(json.dumps({"format": FORMAT, "version": VERSION,
                                  "architecture": good.config(), "class_names": None,
                                  "input_shape": [1, 28, 28], "normalization": None}))
    params = {f"param/{k}": v for k, v in good.state().items()}
    bad = tmp_path / "bad.npz"
    np.savez(bad, __meta__=np.array("{not json"), **params)
    assert_model_file_error(bad, "not valid JSON")
    for meta_change, words in [
        ({"format": "keras"}, ["not a cnn weights file", "'keras'"]),
        ({"format": None}, ["not a cnn weights file"]),
        ({"version": VERSION + 1}, [f"version {VERSION + 1}", "upgrade"]),
        ({"version": 99}, ["version 99", "upgrade"]),
        ({"version": "1"}, ["invalid format version '1'"]),
        ({"version": 0}, ["invalid format version 0"]),
        ({"architecture": {"layers": [{"type": "Conv9D"}], "input_shape": [1, 28, 28]}},
         ["Conv9D"]),
        ({"architecture": None}, ["architecture"]),
        ({"normalization": "z-score"}, ["normalization", "z-score"]),
        ({"normalization": {"mean": 0.1, "std": 0}}, ["normalization"]),
        ({"class_names": ["a", "b"]}, ["2 classes"]),
    ]:
        write_npz(bad, {**meta, **meta_change}, **params)
        if "version" in meta_change or "format" in meta_change:
            assert_model_file_error(bad, *words)        # read_model_file checks these
        with pytest.raises(ModelFileError) as info:      # the rest on loading
            load_model(bad)
        for word in words:
            assert word in str(info.value), (word, str(info.value))
    np.savez(bad, __meta__=np.array(json.dumps([1, 2])), **params)
    assert_model_file_error(bad, "not a cnn weights file")


def test_future_format_version(tmp_path):
    meta, arrays = read_model_file(_saved_lenet(tmp_path))
    meta["version"] = VERSION + 1
    future = write_npz(tmp_path / "future.npz", meta, **arrays)
    assert_model_file_error(future, "future.npz", f"version {VERSION + 1}",
                            f"up to {VERSION}", "upgrade cnn")


def _saved_lenet(tmp_path):
    path = tmp_path / "lenet.npz"
    save_model(path, trained_like("lenet5"))
    return path


def test_weights_that_do_not_match_the_architecture(tmp_path):
    meta, arrays = read_model_file(_saved_lenet(tmp_path))
    convnet = trained_like("convnet")
    # lenet5's description with convnet's weights
    other = {f"param/{k}": v for k, v in convnet.state().items()}
    bad = write_npz(tmp_path / "mismatch.npz", meta, **other)
    assert_model_file_error(bad, "mismatch.npz", "do not fit together",
                            "missing ['11.b', '11.w']", read_too=False)
    # the same names with a wrong shape
    wrong = dict(arrays, **{"param/0.w": np.zeros((6, 1, 3, 3), np.float32)})
    write_npz(bad, meta, **wrong)
    assert_model_file_error(bad, "weight 0.w has shape (6, 1, 3, 3)", "(6, 1, 5, 5)",
                            read_too=False)
    # a missing weight, an extra weight
    fewer = dict(arrays)
    del fewer["param/3.w"]
    write_npz(bad, meta, **fewer)
    assert_model_file_error(bad, "missing ['3.w']", read_too=False)
    extra = dict(arrays, **{"param/99.w": np.zeros(3, np.float32)})
    write_npz(bad, meta, **extra)
    assert_model_file_error(bad, "unexpected ['99.w']", read_too=False)
    # weights of the wrong kind
    ints = dict(arrays, **{"param/0.w": arrays["param/0.w"].astype(np.int64)})
    write_npz(bad, meta, **ints)
    assert_model_file_error(bad, "float32", read_too=False)
    nan = dict(arrays, **{"param/0.b": arrays["param/0.b"] * np.nan})
    write_npz(bad, meta, **nan)
    assert_model_file_error(bad, "0.b", "NaN", read_too=False)


def test_missing_path_and_directory(tmp_path):
    assert_model_file_error(tmp_path / "nope.npz", "nope.npz", "does not exist")
    assert_model_file_error(str(tmp_path / "nope.npz"), "does not exist")
    (tmp_path / "folder.npz").mkdir()
    assert_model_file_error(tmp_path / "folder.npz", "folder.npz", "is a folder")


# --------------------------------------------------------------------------- atomic writes


def test_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, pixels):
    path = tmp_path / "model.npz"
    old_model = trained_like("lenet5", seed=1)
    save_model(path, old_model)
    before = path.read_bytes()
    before_listing = sorted(os.listdir(tmp_path))

    for error in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        def crashing_savez(f, **arrays):
            f.write(b"PK\x03\x04 half a zip file" * 100)
            raise error
        monkeypatch.setattr(np, "savez", crashing_savez)
        with pytest.raises(type(error)):
            save_model(path, trained_like("lenet5", seed=2))
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == before_listing == ["model.npz"]
        np.testing.assert_array_equal(load_model(path).predict_proba(pixels),
                                      old_model.predict_proba(pixels))

    # and a successful write does replace it, leaving no temporary file either
    new_model = trained_like("lenet5", seed=2)
    save_model(path, new_model)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    np.testing.assert_array_equal(load_model(path).predict_proba(pixels),
                                  new_model.predict_proba(pixels))


def test_atomic_write_into_new_folder_and_file_mode(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    old_umask = os.umask(0o022)
    try:
        atomic_write(target, lambda f: f.write(b"hello"))
        assert target.read_bytes() == b"hello"
        # like a plain open(): readable by others under umask 022, not 0600
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        target.chmod(0o640)
        atomic_write(target, lambda f: f.write(b"again"))   # keeps the file's mode
        assert target.read_bytes() == b"again"
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)
    assert os.listdir(target.parent) == ["file.bin"]
