"""MNIST-format IDX datasets: reading, checking, splitting, normalising, augmenting.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, which puts
the four IDX files in ``/usr/share/datasets/fashion-mnist``. Any folder holding
the four MNIST-format files works as well (MNIST mirrors name them
``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, gzipped or not)::

    from cnn.data import load_dataset, train_val_split, Normalizer, augment

    ds = load_dataset()                          # or load_dataset("path/to/mnist")
    tx, ty, vx, vy = train_val_split(ds.train_images, ds.train_labels, 0.1, seed=0)
    norm = Normalizer.fit(tx)                    # scalar mean/std of pixels in [0, 1]
    rng = np.random.default_rng(0)
    for xb, yb in iterate_minibatches(norm(tx), ty, 64, rng=rng):   # (64, 1, 28, 28) float32
        xb = augment(xb, rng, shift=2, flip=True, fill=norm.background)

Every problem with a data file raises :class:`DataError` (a ``ValueError``)
whose message names the file and what is wrong with it; bad arguments raise
``ValueError``/``TypeError`` naming the argument.
"""
import gzip
import numbers
import operator
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError", "read_idx", "DEFAULT_DATA_DIR", "DATA_DIR_ENV", "FASHION_MNIST_CLASSES",
    "Dataset", "load_dataset", "find_idx_file", "train_val_split", "Normalizer", "augment",
    "iterate_minibatches",
]

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "CNN_DATA_DIR"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASSES_FILE = "classes.txt"

# IDX type code -> big-endian dtype of the payload.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_TYPE_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int",
                  0x0D: "float", 0x0E: "double"}
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# Once a gzipped payload is known to be too long, keep counting at most this
# many extra bytes for the message (a gzip bomb must not keep us busy).
_COUNT_EXTRA_LIMIT = 1 << 26

INSTALL_HINT = ("install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                f"(it goes to {DEFAULT_DATA_DIR}), or pass --data-dir DIR (or set "
                f"{DATA_DIR_ENV}) pointing at a folder with the four IDX files "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte (gzipped or not; the train-images.idx3-ubyte "
                "naming of MNIST mirrors works too)")


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the file."""


# --------------------------------------------------------------------------- IDX


def _header_error(path, what):
    return DataError(f"{path}: not a valid IDX file: {what}")


def read_idx(path):
    """Read an IDX file (the MNIST format), gzipped or not, into a NumPy array.

    Gzip is detected by its magic bytes (1f 8b), not by the file name. The
    header is two zero bytes, a type code (0x08 ubyte, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64, all big-endian), the number of
    dimensions ``ndim`` and ``ndim`` big-endian uint32 sizes; the payload must
    hold exactly the number of bytes those sizes give. The size the header
    claims is checked against the real payload before anything that large is
    allocated, so a lying header fails fast with a :class:`DataError`.

    Returns an array of shape ``dims`` (e.g. ``(N, 28, 28)`` for images,
    ``(N,)`` for labels) in native byte order: uint8, int8, int16, int32,
    float32 or float64 according to the type code.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        start = f.read(2)
        f.seek(0)
        if start == GZIP_MAGIC:
            return _read_idx_gzip(path, f)
        return _read_idx_plain(path, f)


def _parse_header(path, stream, compressed):
    """Read the header from ``stream``; return (dtype, dims, header_bytes, payload_bytes)."""
    where = " (after gunzip)" if compressed else ""
    magic = stream.read(4)
    if len(magic) < 4:
        raise _header_error(path, f"{len(magic)} bytes{where}, too short for the 4-byte "
                                  f"magic number")
    if magic[0] != 0 or magic[1] != 0:
        raise _header_error(path, f"bad magic number 0x{magic.hex()}{where}: an IDX file "
                                  f"starts with two zero bytes, a type code and the "
                                  f"number of dimensions")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {n}" for c, n in IDX_TYPE_NAMES.items())
        raise _header_error(path, f"unknown data type code 0x{code:02X} in magic number "
                                  f"0x{magic.hex()}; known codes: {known}")
    if ndim == 0:
        raise _header_error(path, f"magic number 0x{magic.hex()} gives 0 dimensions")
    raw = stream.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise _header_error(path, f"header truncated{where}: {ndim} dimensions need "
                                  f"{4 * ndim} bytes of sizes after the magic number, "
                                  f"found {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    return dtype, dims, 4 + 4 * ndim, count * dtype.itemsize


def _size_error(path, dims, dtype, header, expected, actual, compressed, at_least=False):
    what = "decompressed payload" if compressed else "payload"
    if actual < expected:
        problem = "truncated"
    else:
        problem = "has trailing bytes"
    shown = f"more than {actual}" if at_least else str(actual)
    return DataError(
        f"{path}: IDX file {problem}: header says shape {dims} of "
        f"{IDX_TYPE_NAMES[_code_of(dtype)]} = {expected} bytes of payload after the "
        f"{header}-byte header, but the {what} is {shown} bytes")


def _code_of(dtype):
    for code, dt in IDX_DTYPES.items():
        if dt == dtype:
            return code
    raise AssertionError(dtype)


def _finish(buffer, dtype, dims):
    arr = np.frombuffer(buffer, dtype=dtype).reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    elif dtype.kind == "u":
        arr = arr.view(np.uint8)
    else:
        arr = arr.view(np.int8)
    return arr


def _read_idx_plain(path, f):
    dtype, dims, header, expected = _parse_header(path, f, compressed=False)
    actual = os.fstat(f.fileno()).st_size - header
    if actual != expected:
        raise _size_error(path, dims, dtype, header, expected, actual, compressed=False)
    # The file really is this long, so this allocation is the file's own size.
    buf = bytearray(expected)
    got = f.readinto(buf)
    if got != expected:  # the file changed under us
        raise _size_error(path, dims, dtype, header, expected, got, compressed=False)
    return _finish(buf, dtype, dims)


def _read_idx_gzip(path, f):
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            dtype, dims, header, expected = _parse_header(path, g, compressed=True)
            # The decompressed size is unknown until the end, so read in chunks
            # and keep at most `expected` bytes: memory follows the real data,
            # never the header's claim.
            buf, total, at_least = bytearray(), 0, False
            while True:
                chunk = g.read(_CHUNK)
                if not chunk:
                    break
                if total < expected:
                    buf += chunk[:expected - total]
                total += len(chunk)
                if total > expected + _COUNT_EXTRA_LIMIT:
                    at_least = True
                    break
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip file: {e}") from None
    if total != expected:
        raise _size_error(path, dims, dtype, header, expected, total, compressed=True,
                          at_least=at_least)
    return _finish(buf, dtype, dims)


# ----------------------------------------------------------------------- dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset loaded from an IDX folder.

    - ``train_images``: (N, H, W) uint8, pixels 0-255 (28x28 for (Fashion-)MNIST)
    - ``train_labels``: (N,) int64 in [0, len(class_names))
    - ``test_images``: (M, H, W) uint8, same H, W as the training images
    - ``test_labels``: (M,) int64
    - ``class_names``: tuple of str, one per class
    - ``name``: the folder's name (``"fashion-mnist"`` for the default folder)
    - ``source``: the folder's absolute path
    """
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple
    name: str
    source: str

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        """(H, W) of every image."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, source={self.source!r}, "
                f"train={self.train_images.shape}, test={self.test_images.shape}, "
                f"classes={self.num_classes})")


# (split, kind, IDX ndim) -> how the message names it
_PARTS = (("train", "images", 3), ("train", "labels", 1),
          ("t10k", "images", 3), ("t10k", "labels", 1))


def _candidates(split, kind, ndim):
    """File names accepted for one of the four files, in order of preference."""
    names = []
    for sep in ("-", "."):
        base = f"{split}-{kind}{sep}idx{ndim}-ubyte"
        names += [base, base + ".gz"]
    return names


def find_idx_file(data_dir, split, kind):
    """Path of the IDX file for ``split`` ("train" or "t10k") and ``kind``
    ("images" or "labels") in ``data_dir``, or None when there is none.

    Accepts ``{split}-{kind}-idx{3|1}-ubyte`` and ``{split}-{kind}.idx{3|1}-ubyte``,
    each with or without ``.gz``; an uncompressed file wins over a gzipped one.
    """
    ndim = 3 if kind == "images" else 1
    for name in _candidates(split, kind, ndim):
        p = Path(data_dir) / name
        if p.is_file():
            return p
    return None


def _read_class_names(path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise DataError(f"{path}: no class names (expected one name per line)")
    seen = set()
    for n in names:
        if n in seen:
            raise DataError(f"{path}: class name {n!r} appears more than once")
        seen.add(n)
    return names


def _check_labels(path, labels, what, num_classes, names_from):
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {what} must be integers, got IDX type {labels.dtype}")
    if labels.ndim != 1:
        raise DataError(f"{path}: {what} must be 1-D (N,), got shape {labels.shape}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            index = int(np.flatnonzero(labels == bad)[0])
            raise DataError(f"{path}: {what} must lie in [0, {num_classes}) for the "
                            f"{num_classes} classes of {names_from}, found {bad} at "
                            f"index {index}")
    return labels.astype(np.int64)


def _check_images(path, images, what):
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {what} must be unsigned bytes (IDX type 0x08), got "
                        f"{images.dtype}")
    if images.ndim != 3:
        raise DataError(f"{path}: {what} must be 3-D (N, H, W), got shape {images.shape}")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{path}: {what} is empty, shape {images.shape}")
    return images


def load_dataset(data_dir=None):
    """Load an MNIST-format IDX folder (Fashion-MNIST by default) as a :class:`Dataset`.

    ``data_dir`` None means env ``CNN_DATA_DIR``, else :data:`DEFAULT_DATA_DIR`.
    The folder holds ``train-images``, ``train-labels``, ``t10k-images`` and
    ``t10k-labels`` IDX files (see :func:`find_idx_file` for the names). Class
    names are :data:`FASHION_MNIST_CLASSES` unless the folder has a
    ``classes.txt`` with one name per line (e.g. "0".."9" for digit MNIST).

    Returns images (N, H, W) uint8 and labels (N,) int64. Raises
    :class:`DataError` when a file is missing or malformed, the image and label
    counts differ, a label is outside [0, number of classes), or train and test
    images differ in size.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    folder = Path(os.fspath(data_dir))
    if not folder.exists():
        raise DataError(f"dataset folder {folder} does not exist: {INSTALL_HINT}")
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} is not a folder: {INSTALL_HINT}")

    paths, missing = {}, []
    for split, kind, ndim in _PARTS:
        p = find_idx_file(folder, split, kind)
        if p is None:
            missing.append(" or ".join(_candidates(split, kind, ndim)[::2]) + " [.gz]")
        paths[split, kind] = p
    if missing:
        raise DataError(f"dataset folder {folder} is missing {len(missing)} of the 4 IDX "
                        f"files: {'; '.join(missing)}. To get them: {INSTALL_HINT}")

    classes_path = folder / CLASSES_FILE
    if classes_path.is_file():
        class_names, names_from = _read_class_names(classes_path), str(classes_path)
    else:
        class_names, names_from = FASHION_MNIST_CLASSES, "Fashion-MNIST (no classes.txt)"
    K = len(class_names)

    out = {}
    for split in ("train", "t10k"):
        word = "train" if split == "train" else "test"
        ip, lp = paths[split, "images"], paths[split, "labels"]
        images = _check_images(ip, read_idx(ip), f"{word} images")
        labels = _check_labels(lp, read_idx(lp), f"{word} labels", K, names_from)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{word} images has {images.shape[0]} items but {word} labels "
                            f"has {labels.shape[0]} ({ip} vs {lp})")
        out[word] = images, labels
    (trx, try_), (tex, tey) = out["train"], out["test"]
    if trx.shape[1:] != tex.shape[1:]:
        raise DataError(f"train images are {trx.shape[1]}x{trx.shape[2]} "
                        f"({paths['train', 'images']}) but test images are "
                        f"{tex.shape[1]}x{tex.shape[2]} ({paths['t10k', 'images']})")
    source = os.path.abspath(folder)
    return Dataset(train_images=trx, train_labels=try_, test_images=tex, test_labels=tey,
                   class_names=tuple(class_names), name=os.path.basename(source),
                   source=source)


# ------------------------------------------------------------------ preparation


def _check_pair(x, y, xname="images", yname="labels"):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{xname} must be a numpy array, got {type(x).__name__}")
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{yname} must be a numpy array, got {type(y).__name__}")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{xname} and {yname} must have the same number of items, got "
                         f"shapes {x.shape} and {y.shape}")


def train_val_split(images, labels, val_fraction=0.1, seed=0):
    """Shuffle with ``seed`` then split off ``val_fraction`` of the items.

    images (N, ...), labels (N,). Returns ``(train_x, train_y, val_x, val_y)``
    with ``round(N * val_fraction)`` validation items (at most N - 1, so the
    training part is never empty when N > 0); ``val_fraction`` 0 gives empty
    validation arrays. The same seed always gives the same split, and the two
    parts are disjoint and together hold every item once.
    """
    _check_pair(images, labels)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    n = images.shape[0]
    n_val = min(int(round(n * float(val_fraction))), max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]


def _check_pixels(x, name="x", channels=1):
    """x (N, H, W) or (N, C, H, W), uint8 0-255 or float 0-1 -> (N, C, H, W) view.

    ``channels`` None accepts any C; (N, H, W) is one channel."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim == 3 and channels in (1, None):
        x = x[:, None]
    elif not (x.ndim == 4 and channels in (x.shape[1], None)):
        want = "(N, H, W) or (N, 1, H, W)" if channels in (1, None) else \
            f"(N, {channels}, H, W)"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be uint8 pixels 0-255 or float pixels 0-1, got "
                         f"dtype {x.dtype}")
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            hint = " (divide by 255, or pass the uint8 images)" if hi > 1.0 else ""
            raise ValueError(f"{name} holds float pixels outside [0, 1]: found values in "
                             f"[{lo}, {hi}]{hint}")
    return x


def _check_stat(value, name, positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or (positive and not value > 0):
        kind = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return float(value)


class Normalizer:
    """Per-dataset pixel normalisation: ``(pixel / 255 - mean) / std``.

    ``mean`` and ``std`` are of the training pixels scaled to [0, 1]
    (:meth:`fit`): floats for grayscale, one per channel (tuples) for colour.
    Calling it maps images (N, H, W) or (N, C, H, W), uint8 0-255 or float
    0-1, to float32 (N, C, H, W).
    """

    def __init__(self, mean, std):
        if isinstance(mean, (list, tuple, np.ndarray)) or \
                isinstance(std, (list, tuple, np.ndarray)):
            mean, std = list(np.ravel(mean)), list(np.ravel(std))
            if len(mean) != len(std) or not mean:
                raise ValueError(f"mean and std must have one value per channel, got "
                                 f"{mean!r} and {std!r}")
            if len(mean) > 1:
                self.mean = tuple(_check_stat(m, "mean") for m in mean)
                self.std = tuple(_check_stat(v, "std", positive=True) for v in std)
                return
            mean, std = mean[0], std[0]
        self.mean = _check_stat(mean, "mean")
        self.std = _check_stat(std, "std", positive=True)

    @property
    def channels(self):
        return len(self.mean) if isinstance(self.mean, tuple) else 1

    @classmethod
    def fit(cls, images):
        """Mean and std of every pixel of ``images`` (N, H, W) or (N, 1, H, W),
        uint8 0-255 or float 0-1, on the [0, 1] scale; of each channel for
        (N, C, H, W) with C > 1.

        uint8 images are counted exactly (a histogram, in chunks) with no
        float copy of the whole set.
        """
        x = _check_pixels(images, "images", channels=None)
        if x.shape[1] > 1:
            stats = [cls.fit(x[:, c]) for c in range(x.shape[1])]
            return cls([n.mean for n in stats], [n.std for n in stats])
        if x.size == 0:
            raise ValueError(f"images must not be empty, got shape {images.shape}")
        flat = x.reshape(-1)
        n = flat.size
        if x.dtype == np.uint8:
            hist = np.zeros(256, np.int64)
            for i in range(0, n, _CHUNK):
                hist += np.bincount(flat[i:i + _CHUNK], minlength=256)
            v = np.arange(256, dtype=object)
            h = hist.astype(object)
            s, ss = int((h * v).sum()), int((h * v * v).sum())
            mean = s / (255.0 * n)
            var = (n * ss - s * s) / (float(n) * n * 255.0 * 255.0)  # exact numerator
        else:
            s = ss = 0.0
            for i in range(0, n, _CHUNK):
                c = flat[i:i + _CHUNK].astype(np.float64)
                s += float(c.sum())
            mean = s / n
            for i in range(0, n, _CHUNK):
                c = flat[i:i + _CHUNK].astype(np.float64) - mean
                ss += float(np.dot(c, c))
            var = ss / n
        std = float(np.sqrt(max(var, 0.0)))
        if not std > 1e-12:
            raise ValueError(f"images must not all be the same value: std of the pixels "
                             f"is {std}, cannot normalise")
        return cls(mean, std)

    @property
    def background(self):
        """What a 0 pixel (the background) becomes: ``-mean / std`` (per channel
        for colour)."""
        if self.channels > 1:
            return tuple(-m / s for m, s in zip(self.mean, self.std))
        return -self.mean / self.std

    def __call__(self, x):
        """x (N, H, W) or (N, C, H, W), uint8 0-255 or float 0-1 -> float32 (N, C, H, W)."""
        x = _check_pixels(x, "x", channels=self.channels)
        if self.channels > 1:
            mean = np.array(self.mean).reshape(1, -1, 1, 1)
            std = np.array(self.std).reshape(1, -1, 1, 1)
            if x.dtype == np.uint8:      # one lookup table per channel
                lut = ((np.arange(256) / 255.0 - mean.reshape(-1, 1)) / std.reshape(-1, 1)
                       ).astype(np.float32)                     # (C, 256)
                return lut[np.arange(self.channels).reshape(1, -1, 1, 1), x]
            return ((x.astype(np.float64) - mean) / std).astype(np.float32)
        if x.dtype == np.uint8:
            lut = ((np.arange(256) / 255.0 - self.mean) / self.std).astype(np.float32)
            return lut[x]
        dt = np.float32 if x.dtype.itemsize <= 4 else np.float64
        out = (x.astype(dt) - dt(self.mean)) / dt(self.std)
        return out.astype(np.float32, copy=False)

    def to_dict(self):
        """``{"mean": float, "std": float}`` (plain floats, e.g. for the weights file);
        lists of one float per channel for colour."""
        if self.channels > 1:
            return {"mean": [float(m) for m in self.mean], "std": [float(v) for v in self.std]}
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            raise ValueError(f"d must be a dict with keys 'mean' and 'std', got {d!r}")
        return cls(d["mean"], d["std"])

    def __eq__(self, other):
        if not isinstance(other, Normalizer):
            return NotImplemented
        return self.mean == other.mean and self.std == other.std

    def __repr__(self):
        return f"Normalizer(mean={self.mean!r}, std={self.std!r})"


def augment(batch, rng, shift=2, flip=True, fill=0.0):
    """Random shifts and horizontal flips of a batch, vectorised.

    batch (N, C, H, W) float (float32 in training). Each image is shifted by
    independent random integers in [-shift, shift] rows and columns, the
    uncovered border filled with ``fill`` (0, the background of [0, 1]
    pixels; pass ``Normalizer.background`` for normalised batches; a sequence
    gives one value per channel), and, when
    ``flip``, mirrored left-right with probability 0.5. ``rng`` is a
    ``np.random.Generator``. Returns a new array of the same shape and dtype;
    ``batch`` is not modified. With ``shift=0`` and ``flip=False`` it is a copy.
    """
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"batch must be a numpy array, got {type(batch).__name__}")
    if batch.ndim != 4:
        raise ValueError(f"batch must be 4-D (N, C, H, W), got shape {batch.shape}")
    if batch.dtype.kind != "f":
        raise TypeError(f"batch must be a float array, got dtype {batch.dtype}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral) or shift < 0:
        raise ValueError(f"shift must be an int >= 0, got {shift!r}")
    shift = operator.index(shift)
    N, C, H, W = batch.shape
    if isinstance(fill, (list, tuple, np.ndarray)):
        if len(fill) != C:
            raise ValueError(f"fill must be a number or one value per channel ({C}), got "
                             f"{fill!r}")
        fill = np.array([_check_stat(f, "fill") for f in fill]).reshape(1, C, 1, 1)
    else:
        fill = _check_stat(fill, "fill")
    if N == 0 or (shift == 0 and not flip):
        return batch.copy()

    rows = np.arange(H)
    cols = np.broadcast_to(np.arange(W), (N, W))
    if flip:
        mirrored = rng.random(N) < 0.5
        cols = np.where(mirrored[:, None], W - 1 - cols, cols)
    if shift == 0:
        out = batch.copy()
        out[mirrored] = batch[mirrored][..., ::-1]
        return out

    # out[n, c, i, j] = batch[n, c, i - dy[n], j' - dx[n]] (j' = j or W-1-j),
    # read from a copy padded by `shift` filled with `fill`.
    d = rng.integers(-shift, shift + 1, size=(2, N))
    dy, dx = d[0], d[1]
    Hp, Wp = H + 2 * shift, W + 2 * shift
    padded = np.empty((N, C, Hp, Wp), dtype=batch.dtype)
    padded[...] = fill
    padded[:, :, shift:shift + H, shift:shift + W] = batch
    r = (shift - dy)[:, None] + rows[None, :]          # (N, H)
    c = (shift - dx)[:, None] + cols                   # (N, W)
    idx = (np.arange(N * C).reshape(N, C, 1, 1) * (Hp * Wp)
           + r[:, None, :, None] * Wp + c[:, None, None, :])
    return padded.reshape(-1)[idx]


def iterate_minibatches(x, y, batch_size, rng=None):
    """Iterate over ``(xb, yb)`` minibatches of ``x`` (N, ...) and ``y`` (N,).

    Items are in order, or shuffled by ``rng`` (a ``np.random.Generator``)
    when given; every item appears once and the last batch holds the
    remainder (N % batch_size items) when N is not a multiple of batch_size.
    Arguments are checked at the call, not at the first ``next``.
    """
    _check_pair(x, y, "x", "y")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got "
                        f"{type(rng).__name__}")
    return _minibatches(x, y, operator.index(batch_size), rng)


def _minibatches(x, y, batch_size, rng):
    n = x.shape[0]
    if rng is None:
        for i in range(0, n, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
    else:
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]
