"""Evaluate a trained model on a test set: ``python -m cnn.evaluate MODEL [--json]``.

Loads a weights file written by ``python -m cnn.train`` and runs it on the
test split of Fashion-MNIST (or any MNIST-format IDX folder, image folder or
Keras-layout .npz, ``--data-dir``). For an image folder the weights file's
record gives the decode settings and the split: without a test/ folder,
exactly the images training held out are evaluated (checked by their digest).
Prints the overall accuracy, the test loss (mean cross-entropy), the accuracy
of each class and the confusion matrix (rows: true class, columns: predicted
class); ``--json`` prints the same as one JSON object.

Exit codes: 0 on success, 2 for bad input (missing or corrupt weights file,
missing data, a model that does not fit the dataset, bad arguments).
"""
import argparse
import json
import math
import sys

import numpy as np

from cnn import __version__, get_num_threads
from cnn.backends import BackendUnavailable, get_backend
from cnn.data import DataError
from cnn.datasets import input_shape_of, load_data
from cnn.io import ModelFileError, load_model
from cnn._cli import fail as _fail, positive_int

PROG = "cnn.evaluate"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cnn.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help="weights file written by python -m cnn.train (e.g. models/convnet.npz)")
    p.add_argument("--data-dir", default=None,
                   help="folder of MNIST-format IDX files (default: CNN_DATA_DIR, else "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--cache-dir", default=None,
                   help="where image folders are decoded to (default: CNN_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/cnn or ~/.cache/cnn)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per forward pass (default: 256)")
    p.add_argument("--backend", choices=["cython", "python", "naive"], default=None,
                   help="kernels to use (default: CNN_BACKEND, else cython)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="kernel threads (default: CNN_NUM_THREADS, else all cores)")
    p.add_argument("--json", action="store_true",
                   help="print the results as one JSON object")
    return p


def fail(message, code=2):
    return _fail(PROG, message, code)


def _finite(value):
    """A float for JSON: NaN and infinities become None (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate(model, images, labels, batch_size=256):
    """Metrics of ``model`` on raw uint8 ``images`` (N, H, W) and int ``labels`` (N,).

    Returns a dict: accuracy, loss, correct, total, predictions (N,),
    confusion (K, K) int64 with rows the true class and columns the predicted one.
    """
    labels = np.asarray(labels, dtype=np.int64)
    K = model.num_classes
    logits = model.logits(model.prepare(images), batch_size).astype(np.float64)
    pred = logits.argmax(axis=1)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = float(-logp[np.arange(n), labels].mean()) if n else float("nan")
    correct = int((pred == labels).sum())
    confusion = np.bincount(labels * K + pred, minlength=K * K).reshape(K, K)
    return {"accuracy": correct / n if n else float("nan"), "loss": loss,
            "correct": correct, "total": n, "predictions": pred, "confusion": confusion}


def per_class(confusion, class_names):
    rows = []
    for k, name in enumerate(class_names):
        total = int(confusion[k].sum())
        correct = int(confusion[k, k])
        predicted = int(confusion[:, k].sum())
        rows.append({"label": k, "class": name, "correct": correct, "total": total,
                     "accuracy": correct / total if total else None,
                     "precision": correct / predicted if predicted else None})
    return rows


def format_confusion(confusion, class_names):
    """The confusion matrix as an aligned text table, classes numbered in the header."""
    K = len(class_names)
    name_w = max(len(f"{k} {n}") for k, n in enumerate(class_names))
    corner = "true \\ predicted"
    name_w = max(name_w, len(corner))
    cell_w = max(len(str(int(confusion.max()))) if confusion.size else 1, len(str(K - 1)))
    header = f"{corner:<{name_w}}" + "".join(
        f"  {k:>{cell_w}}" for k in range(K))
    lines = [header]
    for k, name in enumerate(class_names):
        lines.append(f"{f'{k} {name}':<{name_w}}" + "".join(
            f"  {int(v):>{cell_w}}" for v in confusion[k]))
    return "\n".join(lines)


def format_report(report):
    m, d = report["model"], report["dataset"]
    lines = [f"model: {m['path']} ({m['name']}, {m['parameters']:,} parameters, "
             f"backend {m['backend']})",
             f"data: {d['name']} test set, {d['test_images']:,} images, from {d['source']}",
             "",
             f"test accuracy: {report['accuracy']:.4f} ({report['correct']:,} / "
             f"{report['total']:,})",
             f"test loss: {report['loss']:.4f}" if report["loss"] is not None
             else "test loss: n/a",
             "", "per-class accuracy:"]
    rows = report["per_class"]
    name_w = max(len(r["class"]) for r in rows)
    num_w = len(str(max(r["total"] for r in rows)))
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "   n/a"
        lines.append(f"  {r['label']:>{len(str(len(rows) - 1))}} {r['class']:<{name_w}}  "
                     f"{acc}  ({r['correct']:>{num_w}}/{r['total']:>{num_w}})")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):"]
    confusion = np.array(report["confusion_matrix"], dtype=np.int64)
    lines += ["  " + line for line in
              format_confusion(confusion, [r["class"] for r in rows]).splitlines()]
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        get_backend(args.backend)
    except (BackendUnavailable, ValueError) as exc:
        return fail(f"--backend: {exc}")
    try:
        model = load_model(args.model, backend=args.backend, threads=args.threads)
    except ModelFileError as exc:
        return fail(f"MODEL: {exc}")
    record = (getattr(model, "summary_info", None) or {}).get("data") or {}
    settings, split = record.get("settings") or {}, record.get("split") or {}
    try:
        data = load_data(args.data_dir, image_size=settings.get("image_size"),
                         channels=settings.get("channels"),
                         test_fraction=split.get("test_fraction") or 0.1,
                         seed=split.get("seed") or 0, cache_dir=args.cache_dir,
                         log=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
    except DataError as exc:
        return fail(f"--data-dir: {exc}" if args.data_dir else str(exc))
    held_out = (getattr(data, "meta", None) or {}).get("split", {}).get("test_sha256")
    if split.get("test_sha256") and held_out and held_out != split["test_sha256"]:
        return fail(f"the test images of {data.source} are not the {split['test_images']} "
                    f"images {args.model!r} was tested on (files were added, removed or "
                    f"renamed since training): its held-out split cannot be reproduced")

    data_shape = tuple(input_shape_of(data))
    if tuple(model.input_shape) != data_shape:
        return fail(f"the model {args.model!r} takes input of shape {tuple(model.input_shape)} "
                    f"(channels, height, width) but the images of {data.source} are "
                    f"{data_shape}: evaluate it on the dataset it was trained on")
    if model.num_classes != data.num_classes:
        return fail(f"the model {args.model!r} has {model.num_classes} classes but "
                    f"{data.source} has {data.num_classes} ({', '.join(data.class_names)}): "
                    f"evaluate it on the dataset it was trained on")
    class_names = tuple(model.class_names) if model.class_names else tuple(data.class_names)
    if model.class_names and tuple(model.class_names) != tuple(data.class_names):
        print(f"{PROG}: warning: the model's class names {list(model.class_names)} differ "
              f"from the dataset's {list(data.class_names)}; using the model's",
              file=sys.stderr)

    result = evaluate(model, data.test_images, data.test_labels, args.batch_size)
    confusion = result["confusion"]
    report = {
        "model": {"path": args.model, "name": model.name, "parameters": model.num_params(),
                  "input_shape": list(model.input_shape), "backend": model.backend,
                  "threads": args.threads or get_num_threads()},
        "dataset": {"name": data.name, "source": data.source,
                    "test_images": int(len(data.test_labels))},
        "accuracy": _finite(result["accuracy"]),
        "correct": result["correct"],
        "total": result["total"],
        "loss": _finite(result["loss"]),
        "class_names": list(class_names),
        "per_class": per_class(confusion, class_names),
        "confusion_matrix": confusion.tolist(),
        "cnn_version": __version__,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
