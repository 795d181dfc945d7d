"""Write an IDX data set (Fashion-MNIST by default) as an image-folder tree.

    python3 scripts/idx_to_folder.py OUT [--data-dir DIR] [--limit N]

gives ``OUT/train/<NN_class>/<i>.png`` and ``OUT/test/<NN_class>/<i>.png``,
the layout ``python -m cnn.train --data-dir OUT`` reads. Class folders are
named ``00_T-shirt_top``, ``01_Trouser``, ...: the sorted folder names then keep
the data set's label order (when every class has images), so a model trained
from the folder and one trained from the IDX files name the same class with
the same index. Pixels are
written losslessly (8-bit grayscale PNG), so training from the folder sees
exactly the IDX images. This is how the image-folder path is checked against
IDX (README, "Train on your own images").

OUT must not exist or be empty; nothing is overwritten.
"""
import argparse
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from cnn.data import DataError, load_dataset


def folder_names(class_names):
    """``NN_name`` per class, made safe for any file system."""
    width = max(2, len(str(len(class_names) - 1)))
    return [f"{k:0{width}d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'class'}"
            for k, name in enumerate(class_names)]


def write_split(out, split, images, labels, names, workers=2):
    """Write one split; files are named by their index in the IDX file. Only the
    classes that occur get a folder (an empty class folder is an error to the
    folder reader)."""
    for label in sorted(set(labels.tolist())):
        os.makedirs(os.path.join(out, split, names[label]), exist_ok=True)

    def write(lo_hi):
        lo, hi = lo_hi
        for i in range(lo, hi):
            Image.fromarray(images[i]).save(
                os.path.join(out, split, names[labels[i]], f"{i:05d}.png"))

    blocks = [(lo, min(lo + 2000, len(images))) for lo in range(0, len(images), 2000)]
    with ThreadPoolExecutor(workers) as pool:   # Pillow's PNG encoder releases the GIL
        list(pool.map(write, blocks))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder to create")
    p.add_argument("--data-dir", default=None, help="IDX folder (default: Fashion-MNIST)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N images of each split")
    args = p.parse_args(argv)
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        p.error(f"OUT {args.out!r} exists and is not an empty folder")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be a positive integer, got {args.limit}")
    try:
        ds = load_dataset(args.data_dir)
    except DataError as exc:
        print(f"idx_to_folder.py: {exc}", file=sys.stderr)
        return 2
    names = folder_names(ds.class_names)
    start, count = time.perf_counter(), 0
    for split, x, y in (("train", ds.train_images, ds.train_labels),
                        ("test", ds.test_images, ds.test_labels)):
        x, y = x[:args.limit], y[:args.limit]
        write_split(args.out, split, x, y, names)
        count += len(x)
    print(f"wrote {count:,} PNG files of {ds.name} to {args.out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
