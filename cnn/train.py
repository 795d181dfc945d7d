"""Train a classifier: ``python -m cnn.train [--arch convnet] [--epochs 5] ...``.

Loads Fashion-MNIST (or any MNIST-format IDX folder), trains with the Cython
kernels, prints progress and validation metrics each epoch, evaluates on the
test set, and writes beside each other:

    models/convnet.npz            the weights file (cnn.load_model, the service)
    models/convnet.ckpt           checkpoint of the last finished epoch (--resume)
    models/convnet.history.json   per-epoch metrics
    models/convnet.png            learning curves
"""
import argparse
import datetime
import io
import json
import os
import re
import sys
import time

import numpy as np

from cnn import __version__
from cnn._cli import fail as _fail, fraction, non_negative_float, positive_float, positive_int
from cnn.architectures import ARCHITECTURES, build_architecture
from cnn.backends import BackendUnavailable, get_backend
from cnn.data import DataError, Normalizer, load_dataset, train_val_split
from cnn.io import ModelFileError, atomic_write, read_model_file, save_model
from cnn.model import Sequential
from cnn.optim import Schedule, make_optimizer
from cnn.training import evaluate_logits, fit

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cnn.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="convnet",
                   help=f"{', '.join(ARCHITECTURES)}, a JSON file of layer configs, or a "
                        f"spec such as conv32k3p1-relu-maxpool2-flatten-dense10 "
                        f"(default: convnet)")
    p.add_argument("--epochs", type=positive_int, default=5, help="default: 5")
    p.add_argument("--batch-size", type=positive_int, default=64, help="default: 64")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam",
                   help="sgd is Nesterov momentum (default: adam)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: 0.001 for adam, 0.05 for sgd)")
    p.add_argument("--momentum", type=fraction, default=0.9, help="sgd momentum (0.9)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="L2 on weights (0)")
    p.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine",
                   help="learning-rate schedule over the epochs (default: cosine)")
    p.add_argument("--augment", nargs="?", const="both", default=None,
                   choices=["flip", "shift", "both"],
                   help="random horizontal flips, shifts of up to 2 pixels, or both "
                        "(the flag alone)")
    p.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the training set held out for validation (0.1)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--backend", choices=["cython", "python", "naive"], default=None,
                   help="kernels to use (default: CNN_BACKEND, else cython)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="kernel threads (default: CNN_NUM_THREADS, else all cores)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, split and "
                   "shuffling seed (default: 0)")
    p.add_argument("--data-dir", default=None,
                   help="folder of MNIST-format IDX files (default: CNN_DATA_DIR, else "
                        "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default=None,
                   help="weights file to write (default: models/ARCH.npz)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from a checkpoint (default: the one beside --out)")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="live bar, one line per epoch, or bar only on a terminal (auto)")
    return p


def default_out(arch):
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(arch))[0])
    return os.path.join("models", f"{stem or 'model'}.npz")


def checkpoint_path(out):
    stem = out[:-4] if out.endswith(".npz") else out
    return stem + ".ckpt"


def sidecar(out, suffix):
    stem = out[:-4] if out.endswith(".npz") else out
    return stem + suffix


def plot_history(history, path):
    """Loss and accuracy per epoch, train and validation, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], "o-", label="train")
    nan = float("nan")
    ax1.plot(epochs, [nan if h["val_loss"] is None else h["val_loss"] for h in history], "o-",
             label="validation")
    ax1.set(title="loss", xlabel="epoch")
    ax2.plot(epochs, [h["acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [nan if h["val_acc"] is None else h["val_acc"] for h in history], "o-",
             label="validation")
    ax2.set(title="accuracy", xlabel="epoch")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def fail(message, code=2):
    return _fail("cnn.train", message, code)


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = args.out or default_out(args.arch)
    ckpt_file = checkpoint_path(out)
    resume = None
    if args.resume:
        path = ckpt_file if args.resume == "auto" else args.resume
        try:
            resume = read_model_file(path)
        except ModelFileError as exc:
            return fail(f"--resume: {exc}")
        if "checkpoint" not in resume[0]:
            return fail(f"--resume: {path!r} is a weights file, not a checkpoint")
        ckpt_file = path
        saved = resume[0]["checkpoint"]["args"]
        # The run continues as it was started; only the length, threads and
        # backend may change.
        for key, value in saved.items():
            if key not in ("epochs", "threads", "backend", "progress", "resume"):
                setattr(args, key, value)
        out = args.out or default_out(args.arch)

    lr = args.lr or DEFAULT_LR[args.optimizer]
    try:
        get_backend(args.backend)
    except (BackendUnavailable, ValueError) as exc:
        return fail(f"--backend: {exc}")
    try:
        data = load_dataset(args.data_dir)
    except DataError as exc:
        return fail(str(exc))

    images, labels = data.train_images, data.train_labels
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    tr_x, tr_y, va_x, va_y = train_val_split(images, labels, args.val_fraction, args.seed)
    if len(tr_x) == 0:
        return fail("no training images left after the validation split: raise --limit")
    normalizer = Normalizer.fit(tr_x)
    x_train, x_val, x_test = normalizer(tr_x), normalizer(va_x) if len(va_x) else \
        np.zeros((0, 1) + data.image_shape, np.float32), normalizer(data.test_images)

    input_shape = (1,) + tuple(data.image_shape)
    try:
        if resume:
            model = Sequential.from_config(resume[0]["architecture"],
                                           class_names=data.class_names)
        else:
            model = build_architecture(args.arch, data.num_classes, input_shape,
                                       class_names=data.class_names)
        model.build(seed=args.seed, backend=args.backend, threads=args.threads)
    except ValueError as exc:
        return fail(f"--arch: {exc}")
    model.normalization = normalizer.to_dict()
    optimizer = make_optimizer(args.optimizer, model, lr, args.weight_decay, args.momentum)
    schedule = Schedule(lr, args.schedule, epochs=args.epochs,
                        step_size=max(1, args.epochs // 3))
    rng = np.random.default_rng(args.seed + 1)
    start_epoch, history = 0, []
    if resume:
        meta, arrays = resume
        state = meta["checkpoint"]
        try:
            model.load_state({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
        except ValueError as exc:
            return fail(f"--resume: {exc}")
        optimizer.load_state_dict(state["optimizer"],
                                  {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")})
        rng.bit_generator.state = state["rng"]
        model.rng.bit_generator.state = state["model_rng"]
        start_epoch, history = int(state["epoch"]), list(state["history"])

    threads = model.threads or __import__("cnn").get_num_threads()
    print(f"cnn {__version__}: training {model.name} ({model.num_params():,} parameters) "
          f"on {data.name} from {data.source}")
    print(f"  backend {model.backend}, {threads} threads, float32; images: "
          f"{len(x_train):,} train / {len(x_val):,} validation / {len(x_test):,} test; "
          f"batch {args.batch_size}, {args.optimizer} lr {lr:g} ({args.schedule}), "
          f"{args.epochs} epochs{f', augment {args.augment}' if args.augment else ''}, "
          f"seed {args.seed}")
    if resume:
        print(f"  resuming from {ckpt_file} after epoch {start_epoch}")
    print(f"  writing {out}", flush=True)

    run_args = dict(vars(args), lr=lr, out=out)
    started = time.time()

    def on_epoch_end(epoch, metrics):
        history.append(metrics)
        opt_meta, opt_arrays = optimizer.state_dict()
        save_model(ckpt_file, model, checkpoint={
            "epoch": epoch + 1, "args": run_args, "optimizer": opt_meta,
            "rng": rng.bit_generator.state, "model_rng": model.rng.bit_generator.state,
            "history": history}, optimizer_arrays=opt_arrays)

    from cnn.backends import get_backend as _ops
    loss_fn = _ops(args.backend).softmax_cross_entropy
    augment = ({"shift": 0 if args.augment == "flip" else 2,
                "flip": args.augment != "shift", "fill": normalizer.background}
               if args.augment else None)
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]
    if start_epoch >= args.epochs:
        print(f"  the checkpoint already holds {start_epoch} epochs; nothing to train "
              f"(raise --epochs to continue)")
    try:
        fit(model, loss_fn, optimizer, schedule, (x_train, tr_y), (x_val, va_y),
            epochs=args.epochs, batch_size=args.batch_size, rng=rng, start_epoch=start_epoch,
            augment=augment, on_epoch_end=on_epoch_end, progress=progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last finished epoch is saved in {ckpt_file}; "
              f"continue with --resume", file=sys.stderr)
        return 130
    except FloatingPointError as exc:
        return fail(str(exc), 1)

    test_loss, test_acc = evaluate_logits(model, x_test, data.test_labels)
    summary = {
        "arch": args.arch, "epochs": len(history), "test_accuracy": test_acc,
        "test_loss": test_loss,
        "val_accuracy": history[-1]["val_acc"] if history else None,
        "train_accuracy": history[-1]["acc"] if history else None,
        "dataset": data.name, "train_images": len(x_train),
        "optimizer": args.optimizer, "lr": lr, "batch_size": args.batch_size,
        "augment": args.augment, "seed": args.seed, "backend": model.backend,
        "threads": threads, "seconds": round(time.time() - started, 1),
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "cnn_version": __version__,
    }
    save_model(out, model, summary)
    hist_file, png_file = sidecar(out, ".history.json"), sidecar(out, ".png")
    atomic_write(hist_file, lambda f: f.write(json.dumps(
        {"summary": summary, "history": history}, indent=2).encode()))
    plot_history(history, png_file)
    print(f"test_loss: {test_loss:.4f} - test_acc: {test_acc:.4f}")
    print(f"saved {out} (history {hist_file}, curves {png_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
