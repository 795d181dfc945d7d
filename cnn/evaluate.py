"""Evaluate a trained model on a test set: ``python -m cnn.evaluate MODEL [--json]``.

Loads a weights file written by ``python -m cnn.train`` and runs it on the
test split of Fashion-MNIST (or any MNIST-format IDX folder, image folder or
Keras-layout .npz, ``--data-dir``). For an image folder the weights file's
record gives the decode settings and the split: without a test/ folder,
exactly the images training held out are evaluated (checked by their digest).
Prints the overall accuracy, the test loss (mean cross-entropy), each class's
recall (its accuracy), precision and F1 with their macro and weighted averages
(as scikit-learn's ``classification_report``), and the confusion matrix (rows:
true class, columns: predicted class); ``--json`` prints the same as one JSON
object, ``--plot PATH`` draws the confusion matrix as a PNG. An IDX folder needs
only its two test files (``t10k-images``, ``t10k-labels``): evaluating reads
nothing else.

Exit codes: 0 on success, 2 for bad input (missing or corrupt weights file,
missing data, a model that does not fit the dataset, bad arguments), 74 when
the plot cannot be written (the earlier file, if any, is left whole).
"""
import argparse
import io
import json
import math
import os
import sys

import numpy as np

from cnn import __version__, get_num_threads
from cnn._cli import IO_ERROR, fail as _fail, open_model, positive_int, unwritable_folder
from cnn.data import DATA_DIR_ENV, DEFAULT_DATA_DIR, DataError, load_dataset
from cnn.datasets import input_shape_of, load_data
from cnn.datasets.folder import is_image_folder
from cnn.datasets.idx import is_idx_folder, is_idx_test_folder
from cnn.io import atomic_write

PROG = "cnn.evaluate"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cnn.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cnn {__version__}")
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
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="also draw the confusion matrix as a PNG image at PATH (.png is "
                        "added when PATH has no suffix)")
    return p


def fail(message, code=2):
    return _fail(PROG, message, code)


def _finite(value):
    """A float for JSON: NaN and infinities become None (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate(model, images, labels, batch_size=256):
    """Metrics of ``model`` on raw ``images`` and int ``labels`` (N,).

    ``images`` are pixels as ``Sequential.prepare`` takes them: uint8 (or float
    in [0, 1]), (N, H, W) for one channel, (N, C, H, W) or (N, H, W, C).

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


def _ratio(num, den):
    return num / den if den else None


def per_class(confusion, class_names):
    """Each class's counts, accuracy (= recall), precision and F1, from ``confusion``
    (rows true, columns predicted). A ratio with nothing to count is None: precision
    of a class never predicted, recall of a class absent from the test set, F1 of
    a class that is neither."""
    rows = []
    for k, name in enumerate(class_names):
        total = int(confusion[k].sum())
        correct = int(confusion[k, k])
        predicted = int(confusion[:, k].sum())
        recall = _ratio(correct, total)
        rows.append({"label": k, "class": name, "correct": correct, "total": total,
                     "predicted": predicted, "accuracy": recall,
                     "precision": _ratio(correct, predicted), "recall": recall,
                     # 2PR/(P+R) written with counts: defined whenever either is
                     "f1": _ratio(2 * correct, total + predicted)})
    return rows


def averages(rows):
    """Macro (each class alike) and weighted (by test images of the class) means of
    precision, recall and F1. An undefined ratio counts as 0, as in scikit-learn
    (``zero_division=0``), so a class the model never predicts pulls the mean down."""
    total = sum(r["total"] for r in rows)
    out = {}
    for kind, weights in (("macro", [1] * len(rows)), ("weighted", [r["total"] for r in rows])):
        norm = sum(weights)
        out[kind] = {metric: (sum(w * (r[metric] or 0.0) for w, r in zip(weights, rows)) / norm
                              if norm else None)
                     for metric in ("precision", "recall", "f1")}
        out[kind]["support"] = total
    return out


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
             "", "per-class accuracy (recall), precision and F1:"]
    rows = report["per_class"]
    label_w = len(str(len(rows) - 1))
    name_w = max(max(len(r["class"]) for r in rows) + label_w + 1, len("weighted average"))
    num_w = len(str(max(r["total"] for r in rows)))
    count_w = max(2 * num_w + 1, len("correct/images"))

    def number(value):
        return f"{value:>9.4f}" if value is not None else f"{'n/a':>9}"
    lines.append(f"  {'':<{name_w}}  {'recall':>9}{'precision':>10}{'f1':>9}  "
                 f"{'correct/images':>{count_w}}")
    for r in rows:
        name = f"{r['label']:>{label_w}} {r['class']}"
        counts = f"{r['correct']}/{r['total']}"
        lines.append(f"  {name:<{name_w}}  {number(r['recall'])} {number(r['precision'])}"
                     f"{number(r['f1'])}  {counts:>{count_w}}")
    for kind in ("macro", "weighted"):
        a = report["averages"][kind]
        lines.append(f"  {kind + ' average':<{name_w}}  {number(a['recall'])} "
                     f"{number(a['precision'])}{number(a['f1'])}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):"]
    confusion = np.array(report["confusion_matrix"], dtype=np.int64)
    lines += ["  " + line for line in
              format_confusion(confusion, [r["class"] for r in rows]).splitlines()]
    return "\n".join(lines)


def confusion_figure(confusion, class_names, title):
    """The confusion matrix as a matplotlib Figure: rows the true class, columns the
    predicted one, counts in the cells. No pyplot (no global backend or state).
    The figure grows with the classes up to 24 inches (2,400 px): beyond 30 classes
    the cells are left unlabelled and beyond 60 only every n-th class is named."""
    from matplotlib.figure import Figure
    K = len(class_names)
    size = min(4 + 0.5 * K, 24)
    fig = Figure(figsize=(size + 1.5, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    step = max(1, math.ceil(K / 60))
    ticks = list(range(0, K, step))
    ax.set_xticks(ticks, [class_names[k] for k in ticks], rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(ticks, [class_names[k] for k in ticks])
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if K <= 30:
        threshold = confusion.max() / 2 if confusion.size else 0
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=9,
                    color="white" if count > threshold else "black")
    return fig


def plot_confusion(confusion, class_names, title):
    """PNG bytes of :func:`confusion_figure`."""
    buf = io.BytesIO()
    confusion_figure(confusion, class_names, title).savefig(buf, format="png")
    return buf.getvalue()


def plot_path(path):
    """``path`` with .png added when it has no suffix; ValueError naming the
    problem when a PNG cannot be written there (checked before evaluating)."""
    if os.path.isdir(path) or os.path.isdir(path + ".png"):
        folder = path if os.path.isdir(path) else path + ".png"
        raise ValueError(f"{folder!r} is a folder; give a file name such as "
                         f"{os.path.join(folder, 'confusion.png')!r}")
    if not os.path.splitext(path)[1]:
        path += ".png"
    elif not path.lower().endswith(".png"):
        raise ValueError(f"{path!r}: the plot is a PNG image; give a path ending in .png")
    problem = unwritable_folder(path)
    if problem:
        raise ValueError(problem)
    return path


def load_test_data(data_dir, settings, split, cache_dir):
    """The dataset to evaluate on. An IDX folder is read through its two test files
    only (it may lack the training ones, and 60,000 training images would be read
    for nothing); other sources as training reads them, with the decode settings
    and split the weights file recorded."""
    path = os.fspath(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if os.path.isdir(path) and (is_idx_test_folder(path) or is_idx_folder(path)
                                or not is_image_folder(path)):
        return load_dataset(path, test_only=True)   # or its "missing test files" message
    return load_data(path, image_size=settings.get("image_size"),
                     channels=settings.get("channels"),
                     test_fraction=split.get("test_fraction") or 0.1,
                     seed=split.get("seed") or 0, cache_dir=cache_dir,
                     log=lambda line: print(f"{PROG}: {line}", file=sys.stderr))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.plot is not None:
        try:
            args.plot = plot_path(args.plot)
        except ValueError as exc:
            return fail(f"--plot: {exc}")
    model, code = open_model(PROG, args.model, args.backend, args.threads)
    if model is None:
        return code
    record = (getattr(model, "summary_info", None) or {}).get("data") or {}
    settings, split = record.get("settings") or {}, record.get("split") or {}
    try:
        data = load_test_data(args.data_dir, settings, split, args.cache_dir)
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
    report["averages"] = averages(report["per_class"])
    if args.plot is not None:
        accuracy = "n/a" if report["accuracy"] is None else f"{report['accuracy']:.4f}"
        title = (f"{os.path.basename(args.model)} ({model.name}): test accuracy {accuracy} "
                 f"on {report['total']:,} {data.name} images")
        png = plot_confusion(confusion, class_names, title)
        try:
            atomic_write(args.plot, lambda f: f.write(png))
        except OSError as exc:
            return fail(f"--plot: cannot write {args.plot}: {exc.strerror or exc}", IO_ERROR)
        report["plot"] = args.plot
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.plot is not None:
            print(f"\nconfusion matrix plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
