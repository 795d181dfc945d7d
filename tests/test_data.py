"""cnn.data: IDX reading and its errors, dataset loading, split, normalisation,
augmentation, minibatches. Small files in tmp_path; the real Fashion-MNIST
is loaded once when the Debian package is installed."""
import gzip
import os
import time

import numpy as np
import pytest

from cnn.data import (
    DEFAULT_DATA_DIR,
    FASHION_MNIST_CLASSES,
    DataError,
    Dataset,
    Normalizer,
    augment,
    iterate_minibatches,
    load_dataset,
    read_idx,
    train_val_split,
)
from tests.conftest import idx_bytes, make_idx_folder, write_bytes


def header(code, dims):
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


# ------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((5, 3, 4)) * 100).astype(dtype)
    # any name: gzip is found by its magic bytes, not by ".gz"
    path = write_bytes(tmp_path / "some-file", idx_bytes(a), gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (5, 3, 4)
    np.testing.assert_array_equal(out, a)


def test_read_idx_labels_1d_and_str_path(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    path = write_bytes(tmp_path / "labels.gz", idx_bytes(labels), gz=True)
    out = read_idx(str(path))
    assert out.shape == (5,)
    np.testing.assert_array_equal(out, labels)
    out[0] = 9  # writable


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_bad_magic(tmp_path, gz):
    data = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    data[0] = 0x12
    path = write_bytes(tmp_path / "bad", bytes(data), gz)
    with pytest.raises(DataError, match="bad magic number") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_unknown_type_code(tmp_path):
    path = write_bytes(tmp_path / "bad", header(0x0A, [2]) + b"\0\0")
    with pytest.raises(DataError, match="unknown data type code 0x0A"):
        read_idx(path)


def test_read_idx_zero_dims_and_short_header(tmp_path):
    with pytest.raises(DataError, match="0 dimensions"):
        read_idx(write_bytes(tmp_path / "a", bytes([0, 0, 8, 0])))
    with pytest.raises(DataError, match="too short"):
        read_idx(write_bytes(tmp_path / "b", b"\0\0"))
    with pytest.raises(DataError, match="header truncated"):
        read_idx(write_bytes(tmp_path / "c", bytes([0, 0, 8, 3]) + b"\0\0\0\5"))
    with pytest.raises(DataError, match="header truncated"):
        read_idx(write_bytes(tmp_path / "d", bytes([0, 0, 8, 3]) + b"\0\0\0\5", gz=True))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_payload(tmp_path, gz):
    data = idx_bytes(np.zeros((4, 5), np.int16))  # 40 payload bytes
    path = write_bytes(tmp_path / "trunc", data[:-3], gz)
    with pytest.raises(DataError, match=r"truncated.*40 bytes of payload.*is 37 bytes") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_trailing_bytes(tmp_path, gz):
    data = idx_bytes(np.zeros((4, 5), np.uint8))
    path = write_bytes(tmp_path / "trail", data + b"xyz", gz)
    with pytest.raises(DataError, match=r"trailing bytes.*20 bytes of payload.*is 23 bytes"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # flip a byte of the deflate stream
    for name, data in (("flipped", bytes(bad)), ("cut", good[:len(good) // 2]),
                       ("garbage", b"\x1f\x8b" + b"not really gzip at all")):
        path = write_bytes(tmp_path / name, data)
        with pytest.raises(DataError, match="corrupt gzip") as e:
            read_idx(path)
        assert str(path) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_lying_header_fails_fast(tmp_path, gz):
    # 10^12 uint8 items (and 8 * 10^12 float64 bytes) claimed by a tiny file
    for code in (0x08, 0x0E):
        path = write_bytes(tmp_path / f"liar{code}", header(code, [10**6, 1000, 1000]) +
                           b"\0" * 100, gz)
        start = time.perf_counter()
        with pytest.raises(DataError,
                           match=r"truncated.*header says shape \(1000000, 1000, 1000\)"):
            read_idx(path)
        assert time.perf_counter() - start < 1.0


def test_read_idx_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="is a folder"):
        read_idx(tmp_path)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------- load_dataset


def test_load_dataset_fake_folder(idx_folder):
    ds = load_dataset(idx_folder)
    assert isinstance(ds, Dataset)
    assert ds.train_images.shape == (40, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (20, 28, 28) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (40,) and ds.train_labels.dtype == np.int64
    assert ds.test_labels.shape == (20,) and ds.test_labels.dtype == np.int64
    assert ds.class_names == FASHION_MNIST_CLASSES
    assert ds.num_classes == 10 and ds.image_shape == (28, 28)
    assert ds.name == "fake-fashion"
    assert ds.source == os.path.abspath(idx_folder)
    assert "fake-fashion" in repr(ds)


@pytest.mark.parametrize("sep", ["-", "."])
@pytest.mark.parametrize("gz", [False, True])
def test_load_dataset_name_variants(make_idx_dir, sep, gz):
    folder = make_idx_dir(f"d{sep}{gz}", sep=sep, gz=gz, n_train=12, n_test=6, size=(7, 5))
    ds = load_dataset(folder)
    assert ds.train_images.shape == (12, 7, 5) and ds.test_images.shape == (6, 7, 5)
    expected = make_idx_folder(folder.parent / "ref", n_train=12, n_test=6, size=(7, 5))
    ref = load_dataset(expected)
    np.testing.assert_array_equal(ds.train_images, ref.train_images)
    np.testing.assert_array_equal(ds.test_labels, ref.test_labels)


def test_load_dataset_env_var(idx_folder, monkeypatch):
    monkeypatch.setenv("CNN_DATA_DIR", str(idx_folder))
    assert load_dataset().source == os.path.abspath(idx_folder)


def test_load_dataset_classes_txt(make_idx_dir):
    folder = make_idx_dir(num_classes=3)
    (folder / "classes.txt").write_text("cat\ndog\n\nbird\n")
    ds = load_dataset(folder)
    assert ds.class_names == ("cat", "dog", "bird")
    assert set(ds.train_labels) == {0, 1, 2}


def test_load_dataset_classes_txt_too_few_names(make_idx_dir):
    folder = make_idx_dir(num_classes=10)
    (folder / "classes.txt").write_text("\n".join("0123") + "\n")
    with pytest.raises(DataError, match=r"train labels must lie in \[0, 4\).*found 9") as e:
        load_dataset(folder)
    assert "classes.txt" in str(e.value) and "train-labels" in str(e.value)


def test_load_dataset_classes_txt_bad(make_idx_dir):
    folder = make_idx_dir()
    (folder / "classes.txt").write_text("\n \n")
    with pytest.raises(DataError, match="no class names"):
        load_dataset(folder)
    (folder / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="'a' appears more than once"):
        load_dataset(folder)


def test_load_dataset_count_mismatch(make_idx_dir):
    folder = make_idx_dir(n_train=60)
    labels = (np.arange(59) % 10).astype(np.uint8)
    write_bytes(folder / "train-labels-idx1-ubyte.gz", idx_bytes(labels), gz=True)
    with pytest.raises(DataError, match="train images has 60 items but train labels has 59"):
        load_dataset(folder)


def test_load_dataset_label_out_of_range(make_idx_dir):
    folder = make_idx_dir()
    labels = (np.arange(20) % 10).astype(np.uint8)
    labels[7] = 10
    path = write_bytes(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(labels), gz=True)
    with pytest.raises(DataError, match=r"test labels must lie in \[0, 10\).*found 10 at "
                                        r"index 7") as e:
        load_dataset(folder)
    assert str(path) in str(e.value)


def test_load_dataset_image_size_mismatch(make_idx_dir):
    folder = make_idx_dir()
    images = np.zeros((20, 32, 32), np.uint8)
    write_bytes(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(images), gz=True)
    with pytest.raises(DataError, match="train images are 28x28.*test images are 32x32"):
        load_dataset(folder)


def test_load_dataset_wrong_shapes_and_types(make_idx_dir):
    folder = make_idx_dir()
    path = folder / "train-images-idx3-ubyte.gz"
    write_bytes(path, idx_bytes(np.zeros((40, 784), np.uint8)), gz=True)
    with pytest.raises(DataError, match=r"train images must be 3-D \(N, H, W\), got shape "
                                        r"\(40, 784\)"):
        load_dataset(folder)
    write_bytes(path, idx_bytes(np.zeros((40, 28, 28), np.float32)), gz=True)
    with pytest.raises(DataError, match="unsigned bytes"):
        load_dataset(folder)
    make_idx_dir()  # restore
    write_bytes(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros((40, 1), np.uint8)),
                gz=True)
    with pytest.raises(DataError, match="train labels must be 1-D"):
        load_dataset(folder)


def test_load_dataset_errors_from_read_idx_name_the_file(make_idx_dir):
    folder = make_idx_dir()
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset(folder)


def test_load_dataset_missing_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "nowhere")
    msg = str(e.value)
    assert "does not exist" in msg and "nowhere" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


def test_load_dataset_missing_files(make_idx_dir):
    folder = make_idx_dir()
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    msg = str(e.value)
    assert "missing 1 of the 4" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "train-images" not in msg.split("To get them")[0]
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


def test_load_dataset_empty_folder(tmp_path):
    with pytest.raises(DataError, match="missing 4 of the 4") as e:
        load_dataset(tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


def test_load_dataset_not_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(f)


@pytest.mark.skipif(not os.path.isdir(DEFAULT_DATA_DIR),
                    reason=f"{DEFAULT_DATA_DIR} missing: apt-get install dataset-fashion-mnist")
def test_load_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("CNN_DATA_DIR", raising=False)
    ds = load_dataset()
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert set(np.unique(ds.train_labels)) == set(range(10))
    assert set(np.unique(ds.test_labels)) == set(range(10))
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.name == "fashion-mnist"


# ------------------------------------------------------------ train_val_split


def test_split_deterministic_disjoint_complete():
    x = np.arange(100 * 4, dtype=np.uint8).reshape(100, 2, 2)
    y = np.arange(100)
    a = train_val_split(x, y, 0.2, seed=3)
    b = train_val_split(x, y, 0.2, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    tx, ty, vx, vy = a
    assert tx.shape == (80, 2, 2) and ty.shape == (80,) and vx.shape == (20, 2, 2)
    assert vy.shape == (20,)
    assert set(ty).isdisjoint(vy) and set(ty) | set(vy) == set(range(100))
    np.testing.assert_array_equal(tx, x[ty])  # images stay with their labels
    np.testing.assert_array_equal(vx, x[vy])
    c = train_val_split(x, y, 0.2, seed=4)
    assert not np.array_equal(c[3], vy)
    assert not np.array_equal(ty, np.sort(ty))  # shuffled


def test_split_zero_fraction():
    x, y = np.zeros((10, 3, 3), np.uint8), np.arange(10)
    tx, ty, vx, vy = train_val_split(x, y, 0.0)
    assert tx.shape == (10, 3, 3) and vx.shape == (0, 3, 3) and vy.shape == (0,)


def test_split_keeps_a_training_item():
    tx, ty, vx, vy = train_val_split(np.zeros((2, 1, 1)), np.arange(2), 0.9)
    assert len(ty) == 1 and len(vy) == 1


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.1", True, float("nan")])
def test_split_bad_fraction(bad):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(np.zeros((4, 2, 2)), np.arange(4), bad)


def test_split_mismatched_lengths():
    with pytest.raises(ValueError, match="same number of items"):
        train_val_split(np.zeros((4, 2, 2)), np.arange(3))


# ----------------------------------------------------------------- Normalizer


def test_normalizer_fit_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 6, 7), dtype=np.uint8)
    n = Normalizer.fit(x)
    f = x / 255.0
    assert n.mean == pytest.approx(f.mean(), rel=1e-12)
    assert n.std == pytest.approx(f.std(), rel=1e-12)
    m = Normalizer.fit(f)  # float 0-1 gives the same statistics
    assert m.mean == pytest.approx(n.mean, rel=1e-12) and m.std == pytest.approx(n.std, rel=1e-12)
    assert n.background == pytest.approx(-n.mean / n.std)


def test_normalizer_uint8_and_float_agree():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(8, 5, 5), dtype=np.uint8)
    n = Normalizer.fit(x)
    out = n(x)
    assert out.shape == (8, 1, 5, 5) and out.dtype == np.float32
    expected = ((x / 255.0 - n.mean) / n.std)[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    for other in (x / 255.0, (x / 255.0).astype(np.float32), x[:, None],
                  (x / 255.0)[:, None].astype(np.float32)):
        got = n(other)
        assert got.shape == (8, 1, 5, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, out, rtol=1e-6, atol=1e-6)
    assert abs(float(out.mean())) < 1e-5 and float(out.std()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_normalizer_float_pixels_by_hand(dtype):
    """Float 0-1 pixels: (x - mean) / std with no rescaling by 255; values exact in
    binary, so the answer is too. fit() on the same floats: mean 0.5, var 5/32."""
    x = np.array([[[0.0, 0.25], [0.75, 1.0]]], dtype)
    out = Normalizer(0.25, 0.5)(x)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(out[0, 0], [[-0.5, 0.0], [1.0, 1.5]])
    np.testing.assert_array_equal(Normalizer(0.25, 0.5)(x[:, None]), out)
    fitted = Normalizer.fit(x)
    assert fitted.mean == 0.5 and fitted.std == pytest.approx(np.sqrt(5 / 32), rel=1e-12)


@pytest.mark.parametrize("x, match", [
    (np.zeros((2, 3, 3), np.int64), "dtype int64"),
    (np.zeros((2, 3), np.uint8), r"shape \(N, H, W\) or \(N, 1, H, W\)"),
    (np.zeros((2, 3, 3, 3), np.uint8), r"got \(2, 3, 3, 3\)"),
    (np.full((2, 3, 3), 255.0), r"outside \[0, 1\].*divide by 255"),
    (np.full((2, 3, 3), -0.5, np.float32), r"outside \[0, 1\]"),
    (np.full((2, 3, 3), np.nan), r"outside \[0, 1\]"),
    ([[[0]]], "numpy array"),
])
def test_normalizer_bad_input(x, match):
    n = Normalizer(0.5, 0.25)
    with pytest.raises(ValueError, match=match) as e:
        n(x)
    assert str(e.value).startswith("x ")


def test_normalizer_dict_round_trip():
    n = Normalizer.fit(np.arange(256, dtype=np.uint8).reshape(4, 8, 8))
    d = n.to_dict()
    assert set(d) == {"mean", "std"} and all(type(v) is float for v in d.values())
    m = Normalizer.from_dict(d)
    assert m == n
    x = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    np.testing.assert_array_equal(m(x), n(x))


@pytest.mark.parametrize("d", [{"mean": 0.1}, {"mean": 0.1, "std": 0.0},
                               {"mean": float("nan"), "std": 1.0}, "nope"])
def test_normalizer_from_dict_bad(d):
    with pytest.raises(ValueError, match="mean|std|dict"):
        Normalizer.from_dict(d)


def test_normalizer_fit_constant_images():
    with pytest.raises(ValueError, match="images must not all be the same"):
        Normalizer.fit(np.full((3, 4, 4), 7, np.uint8))


# -------------------------------------------------------------------- augment


def batch(n=16, h=9, w=11, seed=0):
    return np.random.default_rng(seed).random((n, 1, h, w)).astype(np.float32)


def test_augment_shape_dtype_and_input_untouched():
    x = batch()
    before = x.copy()
    out = augment(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(x, before)
    assert augment(x.astype(np.float64), np.random.default_rng(0)).dtype == np.float64


def test_augment_identity():
    x = batch()
    out = augment(x, np.random.default_rng(0), shift=0, flip=False)
    np.testing.assert_array_equal(out, x)
    assert out is not x


def test_augment_flips_are_mirror_images():
    x = batch(n=64)
    out = augment(x, np.random.default_rng(0), shift=0, flip=True)
    flipped = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, x)])
    same = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert np.all(flipped ^ same)
    assert 10 < flipped.sum() < 54  # p = 0.5


def test_augment_shifts_with_zero_fill():
    x = batch(n=200, h=8, w=8) + 1.0  # no zero pixels in the input
    out = augment(x, np.random.default_rng(0), shift=2, flip=False)
    seen = set()
    for o, i in zip(out, x):
        # find this image's shift: o[r, c] == i[r - dy, c - dx] on the overlap
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(o[0, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)],
                                     i[0, max(-dy, 0):8 - max(dy, 0), max(-dx, 0):8 - max(dx, 0)])]
        assert len(matches) == 1
        dy, dx = matches[0]
        seen.add((dy, dx))
        assert np.count_nonzero(o == 0) == 64 - (8 - abs(dy)) * (8 - abs(dx))
    assert len(seen) == 25  # every shift in [-2, 2]^2 happens


def test_augment_fill_value():
    x = np.ones((50, 1, 6, 6), np.float32)
    out = augment(x, np.random.default_rng(0), shift=1, flip=False, fill=-0.75)
    assert set(np.unique(out)) == {-0.75, 1.0}


def test_augment_deterministic_under_seed():
    x = batch(n=32)
    a = augment(x, np.random.default_rng(5))
    b = augment(x, np.random.default_rng(5))
    c = augment(x, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_fast():
    x = batch(n=64, h=28, w=28)
    rng = np.random.default_rng(0)
    augment(x, rng)
    best = min(_time(lambda: augment(x, rng)) for _ in range(20))
    assert best < 5e-3  # ~0.2 ms on one core; generous for busy CI machines


def _time(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(batch=np.zeros((2, 3, 3), np.float32)), ValueError, "batch must be 4-D"),
    (dict(batch=np.zeros((2, 1, 3, 3), np.uint8)), TypeError, "batch must be a float"),
    (dict(rng=0), TypeError, "rng must be a numpy.random.Generator"),
    (dict(shift=-1), ValueError, "shift must be an int >= 0"),
    (dict(shift=1.5), ValueError, "shift must be an int >= 0"),
])
def test_augment_bad_arguments(kwargs, exc, match):
    args = dict(batch=np.zeros((2, 1, 3, 3), np.float32), rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        augment(**args)


# ---------------------------------------------------------------- minibatches


def test_minibatches_in_order_with_partial_last():
    x, y = np.arange(10 * 2).reshape(10, 2), np.arange(10)
    batches = list(iterate_minibatches(x, y, 4))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)
    for xb, yb in batches:
        np.testing.assert_array_equal(xb, x[yb])


def test_minibatches_shuffled_and_seeded():
    x, y = np.arange(23 * 3).reshape(23, 3), np.arange(23)
    a = [yb for _, yb in iterate_minibatches(x, y, 5, rng=np.random.default_rng(0))]
    b = [yb for _, yb in iterate_minibatches(x, y, 5, rng=np.random.default_rng(0))]
    assert [len(v) for v in a] == [5, 5, 5, 5, 3]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    allv = np.concatenate(a)
    assert sorted(allv) == list(range(23)) and not np.array_equal(allv, y)
    for xb, yb in iterate_minibatches(x, y, 5, rng=np.random.default_rng(0)):
        np.testing.assert_array_equal(xb, x[yb])


def test_minibatches_bad_arguments_raise_at_call():
    x, y = np.zeros((4, 2)), np.arange(4)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        iterate_minibatches(x, y, 0)
    with pytest.raises(ValueError, match="x and y must have the same number of items"):
        iterate_minibatches(x, y[:3], 2)
    with pytest.raises(TypeError, match="rng must be"):
        iterate_minibatches(x, y, 2, rng=1)
