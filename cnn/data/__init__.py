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

The package, one idea a module: ``idx`` (read_idx: the IDX format, gzip,
sizes checked before allocating), ``fashion_mnist`` (load_dataset: the four
files of a folder, classes.txt, label and image checks, the Fashion-MNIST
defaults), ``dataset`` (Dataset), ``errors`` (DataError), ``split``
(train_val_split), ``normalize`` (Normalizer), ``augment`` (augment),
``batches`` (iterate_minibatches), ``_checks`` (argument checks they share).
"""
from cnn.data.augment import augment
from cnn.data.batches import iterate_minibatches
from cnn.data.dataset import Dataset
from cnn.data.errors import DataError
from cnn.data.fashion_mnist import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    FASHION_MNIST_CLASSES,
    find_idx_file,
    load_dataset,
)
from cnn.data.idx import read_idx
from cnn.data.normalize import Normalizer
from cnn.data.split import train_val_split

# isort: split
# The other public constants of the single-file cnn.data, importable from here as before.
from cnn.data.fashion_mnist import CLASSES_FILE, INSTALL_HINT  # noqa: F401
from cnn.data.idx import GZIP_MAGIC, IDX_DTYPES, IDX_TYPE_NAMES  # noqa: F401

__all__ = [
    "DataError", "read_idx", "DEFAULT_DATA_DIR", "DATA_DIR_ENV", "FASHION_MNIST_CLASSES",
    "Dataset", "load_dataset", "find_idx_file", "train_val_split", "Normalizer", "augment",
    "iterate_minibatches",
]
