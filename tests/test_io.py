"""Weights files: save/load round trips, every kind of bad file, atomic writes."""
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import cnn
from cnn.architectures import ARCHITECTURES, build_architecture
from cnn.io import (
    FORMAT,
    MAX_BYTES,
    VERSION,
    ModelFileError,
    atomic_write,
    declared_shapes,
    load_model,
    read_model_file,
    save_model,
)
from tests import hostile

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


# --------------------------------------------------------------------------- hostile files
# Files whose headers promise far more than they hold. Rejecting one must cost
# what its headers say, not what they promise: tracemalloc sees every NumPy
# and Python allocation, so the peak bounds what loading allocated.


def assert_cheap_rejection(path, *words, fn=load_model, max_mib=16, max_seconds=2.0):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ModelFileError) as info:
            fn(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - started
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert peak < max_mib << 20, f"rejecting {path.name} allocated {peak / 2**20:.0f} MiB"
    assert seconds < max_seconds, f"rejecting {path.name} took {seconds:.1f} s"
    return message


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lenet") / "good.npz"
    save_model(path, trained_like("lenet5"))
    return path


def test_unknown_member_is_refused_unread(lenet_file, tmp_path):
    # 512 MiB of zeros deflated to 0.5 MB: it used to be inflated, then ignored
    bad = hostile.unused_member(tmp_path / "junk.npz", lenet_file, 512 << 20, crc=False)
    assert bad.stat().st_size < 1 << 20
    for fn in (load_model, read_model_file):
        assert_cheap_rejection(bad, "junk.npz", "holds 'junk.npy'",
                               "not part of a cnn weights file", fn=fn)


def test_members_over_the_cap_are_not_decompressed(lenet_file, tmp_path):
    # opt/ members are part of the format (checkpoints), so the cap stops this one
    bad = hostile.huge_optimizer_member(tmp_path / "bomb.ckpt", lenet_file, 1 << 30)
    for fn in (load_model, read_model_file):
        assert_cheap_rejection(bad, "1.0 GiB uncompressed", "opt/m/0.w.npy",
                               "256.0 MiB limit", fn=fn)


def test_array_header_larger_than_its_member(lenet_file, tmp_path):
    bad = hostile.lying_array_header(tmp_path / "lying.npz", lenet_file)
    for fn in (load_model, read_model_file):
        assert_cheap_rejection(bad, "param/0.w.npy declares a float32 array of shape "
                                    "(100000, 100000) (37.3 GiB) but holds 16 bytes", fn=fn)


def test_huge_architecture_is_not_built(lenet_file, tmp_path):
    bad = hostile.huge_architecture(tmp_path / "huge.npz", lenet_file)   # 10^10 parameters
    assert bad.stat().st_size < 4096
    assert_cheap_rejection(bad, "huge.npz", "architecture declares 10,140,306,100 parameters",
                           "37.8 GiB as float32", "256.0 MiB limit")
    # under the cap, but not what the file holds: refused before building
    # (building would allocate 39 million parameters and their float64 init)
    hostile.huge_architecture(bad, lenet_file, units=50_000)
    assert_cheap_rejection(bad, "do not fit together",
                           "weight 1.w has shape (2, 2), the architecture needs (50000, 784)")


def test_huge_zip_directory(tmp_path):
    bad = hostile.huge_directory(tmp_path / "many.npz", 40_000)
    assert_cheap_rejection(bad, "zip directory is", "40,000 members", fn=read_model_file)


def test_rejection_peak_rss_in_a_fresh_process(lenet_file, tmp_path):
    """The real cost, C allocations included: peak RSS of one process that
    rejects every hostile file stays near its baseline."""
    files = [hostile.unused_member(tmp_path / "junk.npz", lenet_file, 1 << 30, crc=False),
             hostile.huge_optimizer_member(tmp_path / "bomb.npz", lenet_file, 1 << 30),
             hostile.lying_array_header(tmp_path / "lying.npz", lenet_file),
             hostile.huge_architecture(tmp_path / "huge.npz", lenet_file),
             hostile.huge_architecture(tmp_path / "fit.npz", lenet_file, units=300_000),
             hostile.huge_directory(tmp_path / "many.npz")]
    script = textwrap.dedent("""
        import resource, sys
        import cnn.backends
        from cnn.io import ModelFileError, load_model
        load_model(sys.argv[1])
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in sys.argv[2:]:
            try:
                load_model(path)
            except ModelFileError:
                pass
            else:
                sys.exit(f"{path} loaded")
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(lenet_file), *map(str, files)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 32, f"peak RSS grew by {proc.stdout.strip()} MiB"


def test_max_bytes(lenet_file):
    size = os.path.getsize(lenet_file)
    for fn in (load_model, read_model_file):
        with pytest.raises(ModelFileError, match="KiB limit for a weights file"):
            fn(lenet_file, max_bytes=size // 2)
    assert load_model(lenet_file, max_bytes=size).num_params() == 61_706
    for bad in (0, -1, 1.5, True, "1000"):
        with pytest.raises(ValueError, match="max_bytes must be a positive integer") as info:
            load_model(lenet_file, max_bytes=bad)
        assert not isinstance(info.value, ModelFileError)   # the caller's error
    assert MAX_BYTES == 256 << 20


def test_the_cap_is_comfortably_above_every_named_architecture():
    for name in ARCHITECTURES:
        model = build_architecture(name).build(seed=0, dtype=np.float64)
        checkpoint = 3 * sum(v.nbytes for v in model.state().values())   # Adam: m and v
        assert checkpoint * 8 < MAX_BYTES, name


def test_declared_shapes_are_what_build_allocates():
    specs = list(ARCHITECTURES) + ["conv8k3s2p1-bn-relu-avgpool2-dropout0.2-flatten-dense10",
                                   "flatten-dense32-relu-dense10"]
    for spec in specs:
        model = build_architecture(spec)
        declared = declared_shapes(model)
        model.build(seed=0)
        assert declared == {k: v.shape for k, v in model.state().items()}, spec


def test_load_model_reads_no_optimizer_member(tmp_path, pixels):
    """A checkpoint whose optimizer arrays are damaged still loads as a model:
    load_model reads only __meta__ and param/ members."""
    model = trained_like("lenet5")
    path = tmp_path / "c.ckpt"
    save_model(path, model, checkpoint={"epoch": 1},
               optimizer_arrays={"m/0.w": np.ones((6, 1, 5, 5), np.float32)})
    members = hostile.members_of(path)
    payload, method, size, crc = members["opt/m/0.w.npy"]
    members["opt/m/0.w.npy"] = (payload, method, size, crc ^ 1)   # bad CRC
    hostile.write_zip(path, members)
    np.testing.assert_array_equal(load_model(path).predict_proba(pixels),
                                  model.predict_proba(pixels))
    with pytest.raises(ModelFileError, match="Bad CRC-32 for file 'opt/m/0.w.npy'"):
        read_model_file(path)


def test_bad_metadata_members(lenet_file, tmp_path):
    members = hostile.members_of(lenet_file)
    bad = tmp_path / "meta.npz"
    for meta, words in [
        (hostile.stored(hostile.npy_bytes(np.zeros(3))), ["metadata (__meta__) is not a JSON "
                                                          "string", "float64"]),
        (hostile.stored(hostile.npy_bytes(np.array("[" * 100_000))), ["not valid JSON"]),
        (hostile.stored(hostile.npy_header("<U1", (5 << 20,)) + bytes(20 << 20)),
         ["metadata (__meta__) is not a JSON string"]),
        (hostile.stored(hostile.npy_header("<U5242880", ()) + bytes(20 << 20)),
         ["metadata is 20.0 MiB"]),
    ]:
        hostile.write_zip(bad, {**members, "__meta__.npy": meta})
        assert_cheap_rejection(bad, "meta.npz", *words, fn=read_model_file, max_mib=48)


def test_pickled_and_duplicate_members(lenet_file, tmp_path):
    members = hostile.members_of(lenet_file)
    bad = tmp_path / "pickle.npz"
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    hostile.write_zip(bad, {**members, "param/0.w.npy": hostile.stored(buf.getvalue())})
    assert_model_file_error(bad, "param/0.w.npy holds Python objects")
    # the same name twice: which one would count?
    with zipfile.ZipFile(bad, "w") as zf:
        for name, (payload, *_rest) in members.items():
            zf.writestr(name, payload)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("param/0.b.npy", members["param/0.b.npy"][0])
    assert_model_file_error(bad, "holds member 'param/0.b.npy' 2 times")


# --------------------------------------------------------------------------- atomic writes


def test_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, pixels):
    path = tmp_path / "model.npz"
    old_model = trained_like("lenet5", seed=1)
    save_model(path, old_model)
    before = path.read_bytes()
    before_listing = sorted(os.listdir(tmp_path))

    for error in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        def crashing_savez(f, error=error, **arrays):
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


@pytest.mark.parametrize("text", [
    "{'descr': f(1), 'fortran_order': False, 'shape': (2,)}",          # a call: AST repr
    "{'descr': '<f4', 'fortran_order': False, 'shape': (",              # tokenize error
    "{'descr': '<f4', 'fortran_order': False, 'shape': [x for x in y]}",
])
def test_unreadable_member_headers_are_named_without_python_internals(lenet_file, tmp_path,
                                                                      text):
    members = hostile.members_of(lenet_file)
    name = next(n for n in members if n.startswith("param/"))
    members[name] = hostile.stored(hostile.raw_npy_header(text))
    bad = tmp_path / "bad.npz"
    hostile.write_zip(bad, members)
    for read in (load_model, read_model_file):
        with pytest.raises(ModelFileError) as info:
            read(bad)
        message = info.value.problem
        assert name in message and "unreadable .npy header" in message, message
        assert "0x" not in message and "<ast" not in message and "object at" not in message


@pytest.mark.parametrize("norm, ok", [
    ({"mean": [0.1, 0.2, 0.3], "std": [0.2, 0.2, 0.2]}, True),
    ({"mean": [0.1, 0.2], "std": [0.2, 0.2]}, False),             # 2 values, 3 channels
    ({"mean": [0.1, 0.2, 0.3], "std": [0.2, 0.0, 0.2]}, False),   # a zero std
    ({"mean": [0.1, 0.2, "x"], "std": [0.2, 0.2, 0.2]}, False),
    ({"mean": 0.2, "std": [0.2, 0.2, 0.2]}, False),
])
def test_per_channel_normalization_of_colour_models(tmp_path, norm, ok):
    model = build_architecture("conv4k3p1-relu-maxpool2-flatten-dense3", 3, (3, 8, 8))
    model.build(seed=0)
    model.normalization = norm
    save_model(tmp_path / "c.npz", model)
    if not ok:
        with pytest.raises(ModelFileError, match="bad normalization"):
            load_model(tmp_path / "c.npz")
        return
    loaded = load_model(tmp_path / "c.npz")
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    mean = np.asarray(norm["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(3, 1, 1)
    assert np.allclose(loaded.prepare(x), (x / np.float32(255) - mean) / std, atol=1e-6)


# ------------------------------------------------------ files mistaken for weights files


def _image(fmt):
    def write(path):
        from PIL import Image
        Image.new("RGB", (28, 28), (200, 10, 10)).save(path, format=fmt)
    return write


def _zip(*members):
    def write(path):
        with zipfile.ZipFile(path, "w") as z:
            for name in members:
                z.writestr(name, b"x")
    return write


@pytest.mark.parametrize("name, write, kind", [
    ("ankle_boot.png", _image("PNG"), "is a PNG image"),
    ("photo.jpg", _image("JPEG"), "is a JPEG image"),
    ("anim.gif", _image("GIF"), "is a GIF image"),
    ("scan.bmp", _image("BMP"), "is a BMP image"),
    ("pic.webp", _image("WEBP"), "is a WEBP image"),
    ("scan.tiff", _image("TIFF"), "is a TIFF image"),
    ("convnet.history.json", lambda p: p.write_text('\n  {"history": [], "é": 1}'),
     "is a JSON file"),
    ("list.npz", lambda p: p.write_text("[1, 2]"), "is a JSON file"),
    ("notes.txt", lambda p: p.write_text("epoch 1: loss 0.5 — café\n" * 20), "is a text file"),
    ("empty.npz", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    ("model.pkl", lambda p: p.write_bytes(__import__("pickle").dumps({"w": [1.0]}, 4)),
     "is a Python pickle"),
    ("model.h5", lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100)), "is an HDF5 file"),
    ("images.gz", lambda p: p.write_bytes(__import__("gzip").compress(b"abc")),
     "is a gzip-compressed file"),
    ("arrays.npz", lambda p: np.savez(p, x_train=np.zeros(3), y_train=np.ones(2)),
     "is a NumPy archive of arrays 'x_train', 'y_train' (np.savez) with no __meta__ member"),
    ("model.pt", _zip("archive/data.pkl", "archive/version"), "is a PyTorch file"),
    ("bundle.zip", _zip("a.txt", "b.txt"), "is a zip archive ('a.txt', 'b.txt')"),
])
def test_a_file_that_is_not_a_weights_file_is_named_for_what_it_is(tmp_path, name, write,
                                                                     kind):
    path = tmp_path / name
    write(path)
    message = assert_model_file_error(path, name, kind,
                                      "not a cnn weights file (.npz written by python -m "
                                      "cnn.train)")
    for numpy_words in ("pickled (object) data", "allow_pickle", "Errno", "zip file"):
        assert numpy_words not in message, message


def test_a_training_checkpoint_loads_like_the_weights_beside_it(tmp_path, pixels):
    """cnn.train writes the .ckpt with save_model(..., checkpoint=..., optimizer_arrays=...):
    a weights file with more members, accepted as it always was."""
    model = trained_like("convnet_bn")
    slots = {f"{slot}/{k}": np.full_like(v, 0.5) for slot in ("m", "v")
             for k, v in model.state().items() if not k.endswith(("running_mean", "running_var"))}
    save_model(tmp_path / "convnet.ckpt", model, summary={"epochs": 5},
               checkpoint={"epoch": 3, "step": 120, "history": [{"loss": 0.5}]},
               optimizer_arrays=slots)
    save_model(tmp_path / "convnet.npz", model, summary={"epochs": 5})
    ckpt, npz = load_model(tmp_path / "convnet.ckpt"), load_model(tmp_path / "convnet.npz")
    np.testing.assert_array_equal(ckpt.predict_proba(pixels), npz.predict_proba(pixels))
