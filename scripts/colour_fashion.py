"""Build "Colour Fashion-MNIST": 32x32 RGB images from the installed Fashion-MNIST.

    python3 scripts/colour_fashion.py OUT.npz [--seed 0] [--limit N] [--data-dir DIR]

CIFAR-10 cannot be downloaded on this machine, so the colour models
(``convnet_cifar``) are measured on a 32x32 RGB set built here instead. Each
28x28 garment is placed at a random offset in a 32x32 canvas and its pixels
are used as the alpha of a random foreground colour over a random background
colour, plus a little per-pixel noise. Colours and offsets are drawn
independently of the label, so colour carries no class information: the net
must learn shape, from RGB input. The two colours of an image are kept at
least MIN_CONTRAST apart so that the garment stays visible.

The output is one ``.npz`` in the Keras layout (``x_train (60000, 32, 32, 3)
uint8, y_train, x_test (10000, 32, 32, 3), y_test, class_names``), which
``python3 -m cnn.train --data-dir OUT.npz`` reads. Labels are the IDX labels,
in the IDX order. The same ``--seed`` (and ``--limit``) gives the same file,
byte for byte. The file is written atomically (temporary file, then rename).
"""
import argparse
import os
import sys
import time

import numpy as np

from cnn.data import DataError, load_dataset
from cnn.io import atomic_write

SIZE = 32            # the canvas: CIFAR-10's 32x32
NOISE = 8.0          # per-pixel, per-channel Gaussian noise, in 0-255 units
MIN_CONTRAST = 96.0  # least Euclidean RGB distance (0-255) between foreground and background
CHUNK = 4096         # images colourised at a time: bounds the float32 working memory


def colour_pairs(rng, n):
    """(background, foreground) colours (n, 3) float32, at least MIN_CONTRAST apart."""
    bg = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    fg = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    for _ in range(100):   # redraw the pairs too close; ~25% of them per round
        close = np.linalg.norm(fg - bg, axis=1) < MIN_CONTRAST
        if not close.any():
            return bg, fg
        fg[close] = rng.uniform(0, 255, (int(close.sum()), 3))
    # Bounded: any pair still close gets the far corner of the cube.
    close = np.linalg.norm(fg - bg, axis=1) < MIN_CONTRAST
    fg[close] = np.where(bg[close] < 128, 255, 0)
    return bg, fg


def colourise(images, rng, size=SIZE):
    """(n, H, W) uint8 grayscale garments -> (n, size, size, 3) uint8 RGB images."""
    n, H, W = images.shape
    dy = rng.integers(0, size - H + 1, n)
    dx = rng.integers(0, size - W + 1, n)
    bg, fg = colour_pairs(rng, n)
    alpha = np.zeros((n, size, size), np.float32)
    for oy in range(size - H + 1):      # one masked copy per offset, not per image
        for ox in range(size - W + 1):
            at = (dy == oy) & (dx == ox)
            alpha[at, oy:oy + H, ox:ox + W] = images[at] * np.float32(1 / 255)
    alpha = alpha[..., None]
    rgb = bg[:, None, None] * (1 - alpha) + fg[:, None, None] * alpha
    rgb += rng.normal(0, NOISE, rgb.shape).astype(np.float32)
    return np.rint(np.clip(rgb, 0, 255, out=rgb)).astype(np.uint8)


def colourise_split(images, seed_sequence, size=SIZE):
    """A whole split, CHUNK images at a time, from its own seed sequence."""
    rng = np.random.default_rng(seed_sequence)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for lo in range(0, len(images), CHUNK):
        out[lo:lo + CHUNK] = colourise(images[lo:lo + CHUNK], rng, size)
    return out


def build(ds, seed=0, limit=None, size=SIZE):
    """The Keras-layout arrays of the colour set made from the IDX dataset ``ds``."""
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    return {"x_train": colourise_split(ds.train_images[:limit], train_seq, size),
            "y_train": ds.train_labels[:limit],
            "x_test": colourise_split(ds.test_images[:limit], test_seq, size),
            "y_test": ds.test_labels[:limit],
            "class_names": np.array(ds.class_names)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the .npz file to write (.npz is added when missing)")
    p.add_argument("--seed", type=int, default=0, help="colours, offsets and noise (default 0)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N images of each split (quick runs, tests)")
    p.add_argument("--data-dir", default=None, help="IDX folder (default: Fashion-MNIST)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be a positive integer, got {args.limit}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    out = args.out if args.out.lower().endswith(".npz") else args.out + ".npz"
    if os.path.isdir(out):
        p.error(f"OUT {out!r} is a folder; name the .npz file to write")
    try:
        ds = load_dataset(args.data_dir)
    except DataError as exc:
        print(f"colour_fashion.py: {exc}", file=sys.stderr)
        return 2
    if ds.image_shape[0] > SIZE or ds.image_shape[1] > SIZE:
        print(f"colour_fashion.py: {ds.name} images are {ds.image_shape}, larger than the "
              f"{SIZE}x{SIZE} canvas", file=sys.stderr)
        return 2
    start = time.perf_counter()
    arrays = build(ds, args.seed, args.limit)
    try:
        atomic_write(out, lambda f: np.savez(f, **arrays))
    except OSError as exc:
        print(f"colour_fashion.py: cannot write {out}: {exc}", file=sys.stderr)
        return 74
    print(f"wrote {len(arrays['x_train']):,} train and {len(arrays['x_test']):,} test "
          f"{SIZE}x{SIZE} RGB images of {ds.name} to {out} "
          f"({os.path.getsize(out) / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
