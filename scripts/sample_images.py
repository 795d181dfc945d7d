"""Write a few test-set images as PNG files named by class, to try a model with.

    python3 scripts/sample_images.py OUT_DIR [--count N] [--data-dir DIR]

gives ``OUT_DIR/ankle_boot.png``, ``OUT_DIR/pullover.png``, ... : the first test
image of each class of Fashion-MNIST (``--count N``: the first N, the second
one ``ankle_boot_2.png`` and so on), so the README's
``curl -F file=@ankle_boot.png ...`` works for a new user. ``--data-dir`` takes
an IDX folder (its two test files are enough) or a Keras-layout ``.npz``.

Pixels are written losslessly, exactly as the data set holds them (light
object on black for Fashion-MNIST, which the service does not invert). Files
are written atomically; files of the same names are replaced, nothing else in
OUT_DIR is touched. Exit status 2 for bad arguments or data.
"""
import argparse
import io
import os
import re
import sys

import numpy as np
from PIL import Image

from cnn.data import DATA_DIR_ENV, DEFAULT_DATA_DIR, DataError, load_dataset
from cnn.datasets.npz import load_npz
from cnn.io import atomic_write

MAX_COUNT = 100   # images per class: samples to try, not an export (see idx_to_folder.py)


def file_stems(class_names):
    """A lower-case file name per class ("Ankle boot" -> "ankle_boot",
    "T-shirt/top" -> "t_shirt_top"); the label is prefixed where two would clash
    or a name has no letters or digits."""
    stems = [re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") for name in class_names]
    if len(set(stems)) < len(stems) or not all(stems):
        stems = [f"{k}_{s}" if s else str(k) for k, s in enumerate(stems)]
    return stems


def pick(labels, num_classes, count):
    """{label: indices of its first ``count`` test images} (file order: repeatable)."""
    return {k: np.flatnonzero(labels == k)[:count] for k in range(num_classes)}


def png_bytes(image):
    """PNG of one uint8 image, (H, W) grayscale or channels-first (3, H, W) colour."""
    if image.ndim == 3:
        image = image.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def load_test_set(data_dir):
    path = os.fspath(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if os.path.isfile(path) and path.lower().endswith(".npz"):
        return load_npz(path)
    return load_dataset(path, test_only=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="sample_images.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT_DIR", help="folder to write the PNG files in "
                                                  "(created when missing)")
    p.add_argument("--count", type=int, default=1, metavar="N",
                   help=f"images per class, 1 to {MAX_COUNT} (default: 1)")
    p.add_argument("--data-dir", default=None,
                   help="IDX folder or Keras-layout .npz (default: CNN_DATA_DIR, else "
                        f"{DEFAULT_DATA_DIR})")
    args = p.parse_args(argv)
    if not 1 <= args.count <= MAX_COUNT:
        p.error(f"--count must be an integer from 1 to {MAX_COUNT}, got {args.count}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"OUT_DIR {args.out!r} exists and is not a folder")
    try:
        data = load_test_set(args.data_dir)
    except DataError as exc:
        print(f"sample_images.py: error: --data-dir: {exc}", file=sys.stderr)
        return 2

    stems = file_stems(data.class_names)
    written, absent = [], []
    try:
        for label, indices in pick(data.test_labels, data.num_classes, args.count).items():
            if not len(indices):
                absent.append(data.class_names[label])
            for n, i in enumerate(indices, 1):
                name = f"{stems[label]}.png" if n == 1 else f"{stems[label]}_{n}.png"
                png = png_bytes(data.test_images[i])
                atomic_write(os.path.join(args.out, name), lambda f, png=png: f.write(png))
                written.append(name)
    except OSError as exc:
        print(f"sample_images.py: error: cannot write in {args.out!r}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} test images of {data.name} to {args.out}: "
          f"{', '.join(written[:12])}{', ...' if len(written) > 12 else ''}")
    if absent:
        print(f"no test images of: {', '.join(absent)}")
    if written:    # the README's example files when there are such
        shown = [n for n in ("ankle_boot.png", "pullover.png") if n in written] or written[:2]
        files = " ".join(f"-F file=@{os.path.join(args.out, n)}" for n in shown)
        print(f"try: curl {files} 'localhost:8000/predict?top_k=2'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
