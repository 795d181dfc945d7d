"""An MNIST-format IDX folder as a Dataset: Fashion-MNIST by default.

Finds the four IDX files in the folder (either naming, gzipped or not), reads
the class names from ``classes.txt`` when there is one, and checks images and
labels against each other before returning a :class:`Dataset`. Every missing
file names what to install or pass (:data:`INSTALL_HINT`). Evaluating needs only
the test split: ``load_dataset(DIR, test_only=True)`` reads the two ``t10k``
files alone (a folder may hold just those) and leaves the training arrays empty.
"""
import os
from pathlib import Path

import numpy as np

from cnn.data.dataset import Dataset
from cnn.data.errors import DataError
from cnn.data.idx import read_idx

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "CNN_DATA_DIR"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASSES_FILE = "classes.txt"

INSTALL_HINT = ("install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                f"(it goes to {DEFAULT_DATA_DIR}), or pass --data-dir DIR (or set "
                f"{DATA_DIR_ENV}) pointing at a folder with the four IDX files "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte (gzipped or not; the train-images.idx3-ubyte "
                "naming of MNIST mirrors works too)")


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


def load_dataset(data_dir=None, test_only=False):
    """Load an MNIST-format IDX folder (Fashion-MNIST by default) as a :class:`Dataset`.

    ``data_dir`` None means env ``CNN_DATA_DIR``, else :data:`DEFAULT_DATA_DIR`.
    The folder holds ``train-images``, ``train-labels``, ``t10k-images`` and
    ``t10k-labels`` IDX files (see :func:`find_idx_file` for the names). Class
    names are :data:`FASHION_MNIST_CLASSES` unless the folder has a
    ``classes.txt`` with one name per line (e.g. "0".."9" for digit MNIST).

    ``test_only`` reads only the two ``t10k`` files (what evaluating needs): the
    folder may lack the training files, and the dataset's training images and
    labels are empty, (0, H, W) and (0,), with H and W those of the test images.

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

    parts = [p for p in _PARTS if p[0] == "t10k"] if test_only else _PARTS
    paths, missing = {}, []
    for split, kind, ndim in parts:
        p = find_idx_file(folder, split, kind)
        if p is None:
            missing.append((split, " or ".join(_candidates(split, kind, ndim)[::2]) + " [.gz]"))
        paths[split, kind] = p
    if missing:
        what = "test IDX files" if test_only else "IDX files"
        # Only the training files missing: say that evaluating would work.
        note = (" (training needs all four; python -m cnn.evaluate needs only the two "
                "t10k files)" if not test_only and {s for s, _ in missing} == {"train"}
                else "")
        raise DataError(f"dataset folder {folder} is missing {len(missing)} of the "
                        f"{len(parts)} {what}: {'; '.join(m for _, m in missing)}{note}. "
                        f"To get them: {INSTALL_HINT}")

    classes_path = folder / CLASSES_FILE
    if classes_path.is_file():
        class_names, names_from = _read_class_names(classes_path), str(classes_path)
    else:
        class_names, names_from = FASHION_MNIST_CLASSES, "Fashion-MNIST (no classes.txt)"
    K = len(class_names)

    out = {}
    for split in ("t10k",) if test_only else ("train", "t10k"):
        word = "train" if split == "train" else "test"
        ip, lp = paths[split, "images"], paths[split, "labels"]
        images = _check_images(ip, read_idx(ip), f"{word} images")
        labels = _check_labels(lp, read_idx(lp), f"{word} labels", K, names_from)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{word} images has {images.shape[0]} items but {word} labels "
                            f"has {labels.shape[0]} ({ip} vs {lp})")
        out[word] = images, labels
    tex, tey = out["test"]
    trx, try_ = out.get("train") or (np.empty((0, *tex.shape[1:]), np.uint8),
                                     np.empty(0, np.int64))
    if trx.shape[1:] != tex.shape[1:]:
        raise DataError(f"train images are {trx.shape[1]}x{trx.shape[2]} "
                        f"({paths['train', 'images']}) but test images are "
                        f"{tex.shape[1]}x{tex.shape[2]} ({paths['t10k', 'images']})")
    source = os.path.abspath(folder)
    return Dataset(train_images=trx, train_labels=try_, test_images=tex, test_labels=tey,
                   class_names=tuple(class_names), name=os.path.basename(source),
                   source=source)
