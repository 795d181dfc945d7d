"""Classify image files: ``python -m cnn.predict MODEL IMAGE... [--top 3] [--json]``.

Each image (PNG, JPEG, BMP, GIF, WEBP, TIFF or PPM; any size and colour mode)
is turned into the model's input by ``cnn.images.decode_image``, the way the
weights file says (``cnn.images.upload_policy``): for a model trained on an
image folder, exactly as its training images were decoded (grayscale or RGB,
the short side resized, centre-cropped); for a Fashion-MNIST-style model,
grayscale, a light object on a black background (``--invert auto``, its
default, inverts pictures with a light background, such as product photos on
white), fitted into the model's input size. For each image it prints the
top-K classes with their probabilities::

    shoe.png: Sneaker 0.91, Sandal 0.05, Ankle boot 0.03

An image that cannot be read gets an error line (on stderr) naming it and the
reason; the other images are still classified. ``--json`` prints one list of
objects ``{file, label, class, probability, top: [{label, class, probability}]}``,
or ``{file, error}`` for an image that could not be read.

Exit codes: 0 when every image was classified, 1 when any image could not be
read, 2 for bad input (missing or corrupt weights file, bad arguments).
"""
import argparse
import json
import sys

import numpy as np

from cnn import __version__
from cnn._cli import fail as _fail, open_model, positive_int
from cnn.images import ImageError, decode_image, upload_policy

PROG = "cnn.predict"
INVERT = {"auto": "auto", "yes": True, "no": False}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cnn.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cnn {__version__}")
    p.add_argument("model", metavar="MODEL",
                   help="weights file written by python -m cnn.train (e.g. models/convnet.npz)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files to classify")
    p.add_argument("--top", type=positive_int, default=3, metavar="K",
                   help="how many of the most likely classes to show (default: 3)")
    p.add_argument("--invert", choices=list(INVERT), default=None,
                   help="make the object light on black: auto inverts images with a light "
                        "background, yes always, no never (default: the model's own: auto "
                        "for models trained on light objects on black, else no)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON list with an object per image")
    p.add_argument("--backend", choices=["cython", "python", "naive"], default=None,
                   help="kernels to use (default: CNN_BACKEND, else cython)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="kernel threads (default: CNN_NUM_THREADS, else all cores)")
    return p


def fail(message, code=2):
    return _fail(PROG, message, code)


def class_names_of(model):
    if model.class_names:
        return [str(n) for n in model.class_names]
    return [str(k) for k in range(model.num_classes)]


def top_k(proba, k, names):
    """[{label, class, probability}] of the k most likely classes, most likely first."""
    order = np.argsort(-proba, kind="stable")[:k]
    return [{"label": int(i), "class": names[i], "probability": float(proba[i])}
            for i in order]


def main(argv=None):
    args = build_parser().parse_args(argv)
    model, code = open_model(PROG, args.model, args.backend, args.threads)
    if model is None:
        return code
    options = upload_policy(model).decode_options(
        None if args.invert is None else INVERT[args.invert])
    names = class_names_of(model)
    k = min(args.top, len(names))

    results, pixels, decoded = [], [], []
    for path in args.images:
        try:
            pixels.append(decode_image(path, name=path, **options))
        except ImageError as exc:
            results.append({"file": path, "error": exc.reason})
        else:
            decoded.append(len(results))
            results.append({"file": path})

    if pixels:
        proba = model.compile().predict_proba(np.stack(pixels))   # cnn.plan
        for i, p in zip(decoded, proba):
            top = top_k(p, k, names)
            results[i].update(label=top[0]["label"], **{"class": top[0]["class"]},
                              probability=top[0]["probability"], top=top)

    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: error: {r['error']}", file=sys.stderr)
            else:
                print(f"{r['file']}: " + ", ".join(
                    f"{t['class']} {t['probability']:.2f}" for t in r["top"]))
    sys.stdout.flush()
    if failed:
        print(f"{PROG}: {len(failed)} of {len(results)} images could not be read",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
