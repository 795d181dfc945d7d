"""Train a classifier: ``python -m cnn.train [--arch convnet] [--epochs 5] ...``.

Loads Fashion-MNIST (or, with --data-dir, any MNIST-format IDX folder, an
image-folder tree DIR/<class>/*.png|jpg or DIR/train/<class>, DIR/test/<class>,
or a Keras-layout .npz; see cnn.datasets), trains with the Cython kernels,
prints progress and validation metrics each epoch, evaluates on the test set,
and writes beside each other:

    models/convnet.npz            the weights file (cnn.load_model, the service)
    models/convnet.ckpt           checkpoint for --resume: every --checkpoint-every
                                  (60s) and at each epoch end
    models/convnet.history.json   the summary and per-epoch metrics (cnn.history)
    models/convnet.history.csv    one row per epoch, as Keras' CSVLogger
    models/convnet.png            learning curves: loss (per step too), accuracy, lr

--early-stopping PATIENCE stops when --monitor (val_loss) has not improved for
PATIENCE epochs; --keep best (the default with early stopping) saves the best
epoch's weights instead of the last (cnn.early_stopping). The summary says which
epoch was kept.

--resume continues a run with the settings saved in its checkpoint: a flag that
contradicts them is an error; --epochs may change the run's length (the message
says how the learning-rate schedule changes). A resumed run computes the same
weights bit for bit as one that was never stopped (same --threads and backend).

``mpiexec -n N python -m cnn.train ...`` (or srun) trains one model on N ranks
(cnn.distributed; detected from the launcher, or --distributed): --batch-size
stays the global batch, each rank computes its slice of it, and the weights are
the one process's up to float32 rounding. Rank 0 alone prints and writes; a
checkpoint resumes with any number of ranks; a rank that fails ends the job
(MPI_Abort), and one that dies or hangs ends it after --mpi-timeout seconds.

The output is checked before training (a folder, no write permission, too little
free space: exit 2); an I/O error while writing ends with one line and exit
status 74, the earlier files intact. The service serves only *.npz files, so
--out gets the suffix when it has none.
"""
import argparse
import datetime
import os
import re
import signal
import sys
import threading
import time
import traceback

import numpy as np

from cnn import __version__, distributed, history as run_history
from cnn._cli import (
    IO_ERROR,
    fail as _fail,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    steps_or_seconds,
)
from cnn.architectures import ARCHITECTURES, build_architecture
from cnn.backends import BackendUnavailable, fallback_note, get_backend
from cnn.data import DataError, Normalizer, train_val_split
from cnn.datasets import input_shape_of, load_data, record_of
from cnn.early_stopping import EarlyStopping
from cnn.fit import evaluate_logits, fit
from cnn.interrupts import (
    Terminated,
    ctrl_c_deferred,
    interrupted_status,
    raise_terminated,
)
from cnn.io import ModelFileError, read_model_file, save_model
from cnn.model import Sequential
from cnn.optim import Schedule, make_optimizer
from cnn.resume import (
    BEST_PREFIX,
    data_fingerprint,
    describe,
    flag,
    parse_args,
    restore_run,
    resume_command,
)
from cnn.run_files import (
    OutputError,
    check_output,
    checkpoint_path,
    default_out,
    remove_stale_temp_files,
    sidecar,
    weights_path,
    write_output,
)

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cnn.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cnn {__version__}")
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
                   help="random horizontal flips, shifts of up to --shift pixels, or both "
                        "(the flag alone)")
    p.add_argument("--shift", type=non_negative_int, default=2, metavar="N",
                   help="largest shift of --augment shift/both, in pixels: a random crop of "
                        "the image padded by N on every side, filled with the background "
                        "(default: 2; CIFAR-style recipes use 4 for 32x32 images)")
    p.add_argument("--early-stopping", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop when --monitor has not improved for PATIENCE epochs "
                        "(Keras' EarlyStopping; default: off)")
    p.add_argument("--monitor", choices=["val_loss", "val_acc"], default="val_loss",
                   help="the validation metric of --early-stopping and --keep best "
                        "(default: val_loss)")
    p.add_argument("--keep", choices=["best", "last"], default=None,
                   help="the weights to save: the last epoch's, or the best epoch's by "
                        "--monitor (default: best with --early-stopping, else last)")
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
                   help="a folder of MNIST-format IDX files, an image folder "
                        "(DIR/<class>/*.png|jpg|..., or DIR/train/<class> and "
                        "DIR/test/<class>) or a Keras-layout .npz, detected (default: "
                        "CNN_DATA_DIR, else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--image-size", type=image_size, default=None, metavar="HxW",
                   help="image folders: resize the short side, then centre-crop to HxW "
                        "(default: the images' own size when they all agree)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="image folders: 1 grayscale or 3 RGB (default: 1 when every image "
                        "is grayscale, else 3)")
    p.add_argument("--test-fraction", type=open_fraction, default=0.1,
                   help="image folders without test/: share of each class held out for "
                        "the test set, seeded by --seed and recorded (default: 0.1)")
    p.add_argument("--cache-dir", default=None,
                   help="where image folders are decoded to (default: CNN_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/cnn or ~/.cache/cnn)")
    p.add_argument("--strict", action="store_true",
                   help="image folders: a file that is not a readable image is an error "
                        "(default: skipped and named)")
    p.add_argument("--out", default=None,
                   help="weights file to write (default: models/ARCH.npz); .npz is added "
                        "when missing, as the service serves only *.npz files")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue a stopped run from its checkpoint (default: the one "
                        "beside --out) with the run's own settings; other values of "
                        "them are an error, except --epochs (changes the run's length "
                        "and so its learning-rate schedule), --threads, --backend and "
                        "--data-dir (checked to hold the same images)")
    p.add_argument("--checkpoint-every", type=steps_or_seconds, default=("seconds", 60.0),
                   metavar="STEPS|TIME",
                   help="also save the checkpoint within epochs, every STEPS training "
                        "steps (e.g. 200) or every TIME (e.g. 30s, 5m; default: 60s)")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="live bar, one line per epoch, or bar only on a terminal (auto)")
    p.add_argument("--distributed", action="store_true",
                   help="train over MPI, one model on every rank of mpiexec/srun "
                        "(detected from the launcher's environment without the flag; "
                        "needs pip install 'cnn[mpi]'); --batch-size stays the global batch")
    p.add_argument("--mpi-timeout", type=positive_float,
                   default=distributed.DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="over MPI: end the whole job when the ranks have not met for "
                        "this long (a rank died or hangs; default: %(default)g)")
    return p


def image_size(text):
    """"32x32" (or "32") -> [H, W] (a list: it goes through the checkpoint's JSON)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m or not 1 <= int(m.group(1)) <= 4096 or not 1 <= int(m.group(2) or 1) <= 4096:
        raise argparse.ArgumentTypeError(f"expected HxW with sides 1-4096 such as 32x32, "
                                         f"got {text!r}")
    h = int(m.group(1))
    return [h, int(m.group(2) or h)]


def open_fraction(text):
    value = fraction(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def fail(message, code=2):
    return _fail("cnn.train", message, code)


def _failer(comm):
    """fail(), naming the rank when it is not rank 0: over MPI every rank says
    why it stops (an error may be one rank's own, such as its missing data)."""
    if comm is None or comm.rank == 0:
        return fail
    return lambda message, code=2: fail(f"rank {comm.rank}: {message}", code)


def main(argv=None):
    # SIGTERM stops a run as Ctrl-C does (the message names the checkpoint to
    # continue from), exit status 143; only in the main thread, where Python
    # runs signal handlers.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return run(argv)
    except KeyboardInterrupt as exc:    # before training started (training has its own)
        print("\ninterrupted before training started: nothing was saved", file=sys.stderr)
        return interrupted_status(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run(argv=None):
    parser = build_parser()
    args, given = parse_args(parser, argv)
    try:
        comm = distributed.connect(args.distributed, args.mpi_timeout)
    except distributed.DistributedError as exc:
        return fail(str(exc))
    if comm is None:
        return train(args, given, None)
    # Over MPI a rank that fails alone must end the job, else the others would
    # wait for it in their next collective.
    code = 1
    try:
        with distributed.quiet_unless_rank0(comm):
            code = train(args, given, comm)
    except KeyboardInterrupt as exc:
        code = interrupted_status(exc)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if code != 0:
            comm.abort(code)
    return code


def train(args, given, comm):
    """The run of ``args``; over MPI (``comm``) every rank runs it, rank 0 alone
    writes files and prints."""
    lead = comm is None or comm.rank == 0
    fail = _failer(comm)
    if args.out is not None and (os.path.isdir(args.out) or args.out.endswith(os.sep)):
        return fail(f"--out: {args.out!r} is a folder; give a file name such as "
                    f"{os.path.join(args.out, 'model.npz')!r}")
    out = weights_path(args.out or default_out(args.arch))
    ckpt_file = checkpoint_path(out)
    resume, notes = None, []
    if args.resume:
        path = ckpt_file if args.resume == "auto" else args.resume
        try:
            resume = read_model_file(path)
        except ModelFileError as exc:
            return fail(f"--resume: {exc}")
        if "checkpoint" not in resume[0]:
            return fail(f"--resume: {path!r} is a weights file, not a checkpoint")
        state = resume[0]["checkpoint"]
        saved = state["args"]
        # The weights file lives beside its checkpoint; --out may only name it.
        run_out = path[:-5] + ".npz" if path.endswith(".ckpt") else \
            weights_path(saved.get("out") or out)
        if "out" in given and os.path.abspath(out) != os.path.abspath(run_out):
            return fail(f"--out {args.out} differs from the resumed run's weights file "
                        f"{run_out}: leave --out out to continue that run")
        out, ckpt_file = run_out, path
        error, notes = restore_run(args, given, saved, int(state["epoch"]))
        if error:
            return fail(error)
    elif args.out is not None and out != args.out:
        notes.append(f"--out {args.out}: writing {out} (the service serves only *.npz files)")

    lr = args.lr or DEFAULT_LR[args.optimizer]
    try:
        get_backend(args.backend)
    except (BackendUnavailable, ValueError) as exc:
        return fail(f"--backend: {exc}")
    try:
        data = load_data(args.data_dir, image_size=args.image_size, channels=args.channels,
                         test_fraction=args.test_fraction, seed=args.seed,
                         cache_dir=args.cache_dir, strict=args.strict,
                         log=lambda line: print(f"  {line}"))
    except DataError as exc:
        return fail(str(exc))
    record = record_of(data)
    for key in ("image_size", "channels"):
        if getattr(args, key) is not None and record.get("source_kind") != "folder":
            return fail(f"{flag(key)}: applies to image folders; {data.source} holds "
                        f"{data.input_shape if hasattr(data, 'input_shape') else 'IDX'} "
                        f"images already")

    images, labels = data.train_images, data.train_labels
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    fingerprint = data_fingerprint(images, labels)
    if resume and resume[0]["checkpoint"].get("data_sha256", fingerprint) != fingerprint:
        return fail(f"--data-dir: the training images in {data.source} are not the ones the "
                    f"resumed run was trained on")
    input_shape = input_shape_of(data)
    if args.augment in ("shift", "both") and args.shift >= min(input_shape[1:]):
        return fail(f"--shift {args.shift}: must be smaller than the images "
                    f"({input_shape[1]}x{input_shape[2]})")
    val_folder = getattr(data, "val_images", None) is not None and len(data.val_images) > 0
    if val_folder:      # the folder's own val/ split replaces --val-fraction
        tr_x, tr_y, va_x, va_y = images, labels, data.val_images, data.val_labels
    else:
        tr_x, tr_y, va_x, va_y = train_val_split(images, labels, args.val_fraction,
                                                 args.seed)
    if len(tr_x) == 0:
        return fail("no training images left after the validation split: raise --limit")
    normalizer = Normalizer.fit(tr_x)      # per channel for colour
    x_train, x_val, x_test = normalizer(tr_x), normalizer(va_x) if len(va_x) else \
        np.zeros((0,) + tuple(input_shape), np.float32), normalizer(data.test_images)

    try:
        if resume:
            model = Sequential.from_config(resume[0]["architecture"],
                                           class_names=data.class_names)
        else:
            model = build_architecture(args.arch, data.num_classes, input_shape,
                                       class_names=data.class_names)
        threads = args.threads if comm is None else \
            distributed.threads_per_rank(comm.local_size, args.threads)
        model.build(seed=args.seed, backend=args.backend, threads=threads)
    except ValueError as exc:
        return fail(f"--arch: {exc}")
    model.normalization = normalizer.to_dict()
    optimizer = make_optimizer(args.optimizer, model, lr, args.weight_decay, args.momentum)
    schedule = Schedule(lr, args.schedule, epochs=args.epochs,
                        step_size=max(1, args.epochs // 3))
    steps = (len(x_train) + args.batch_size - 1) // args.batch_size
    smallest = len(x_train) - (steps - 1) * args.batch_size
    if comm is not None and smallest < comm.size:
        return fail(f"--batch-size {args.batch_size}: every batch needs an image for each "
                    f"of the {comm.size} ranks, but the last batch of an epoch of "
                    f"{len(x_train):,} images holds {smallest}: change --batch-size or "
                    f"--limit")
    keep = args.keep or ("best" if args.early_stopping else "last")
    watching = bool(args.early_stopping) or keep == "best"
    if watching and len(x_val) == 0:
        return fail(f"{'--early-stopping' if args.early_stopping else '--keep best'} needs a "
                    f"validation set: --val-fraction above 0 (or a val/ folder)")
    stopper = EarlyStopping(args.monitor, args.early_stopping, keep)
    rng = np.random.default_rng(args.seed + 1)
    start_epoch, history, position = 0, [], None
    if resume:
        meta, arrays = resume
        state = meta["checkpoint"]
        try:
            model.load_state({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
        except ValueError as exc:
            return fail(f"--resume: {exc}")
        optimizer.load_state_dict(state["optimizer"], {
            k[4:]: v for k, v in arrays.items()
            if k.startswith("opt/") and not k.startswith(BEST_PREFIX)})
        stopper.load_state_dict(state.get("early_stopping") or {}, {
            k[len(BEST_PREFIX):]: v for k, v in arrays.items() if k.startswith(BEST_PREFIX)})
        rng.bit_generator.state = state["rng"]
        model.rng.bit_generator.state = state["model_rng"]
        start_epoch, history = int(state["epoch"]), list(state["history"])
        position = state.get("position")
        if position is not None and args.epochs <= start_epoch:
            return fail(f"--epochs {args.epochs}: the checkpoint is within epoch "
                        f"{start_epoch + 1}")
        if position is not None and not 0 < position["step"] < steps:
            return fail(f"--resume: the checkpoint's step {position['step']} is not within "
                        f"an epoch of {steps} steps")

    # Everything a checkpoint holds, twice (the new file is written before the
    # old one is replaced), plus the weights file, history and curves.
    # Rank 0 alone writes, so it alone checks the output.
    param_bytes = sum(v.nbytes for v in model.state().values())
    error = check_output(out, 2 * 3 * param_bytes + param_bytes + 2**20) if lead else None
    if error:
        return fail(error)
    stale = remove_stale_temp_files(out) if lead else []

    threads = model.threads or __import__("cnn").get_num_threads()
    ranks = f"{comm.size} MPI ranks x " if comm is not None else ""
    print(f"cnn {__version__}: training {model.name} ({model.num_params():,} parameters) "
          f"on {data.name} from {data.source}")
    stopping = (f", early stopping (patience {args.early_stopping}, {args.monitor})"
                if args.early_stopping else "")
    print(f"  backend {model.backend}, {ranks}{threads} threads, float32; images: "
          f"{len(x_train):,} train / {len(x_val):,} validation / {len(x_test):,} test; "
          f"batch {args.batch_size}, {args.optimizer} lr {lr:g} ({args.schedule}), "
          f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
          f"{f', augment {args.augment}' if args.augment else ''}"
          f"{stopping}, "
          f"seed {args.seed}")
    for note in [fallback_note(args.backend)] + notes:
        if note:
            print(f"  {note}")
    if stale:
        print(f"  removed {len(stale)} temporary file(s) left by a killed run: "
              f"{', '.join(os.path.basename(p) for p in stale)}")
    # What this run has saved so far: only that may be offered for --resume.
    saved_at = None
    if resume:
        saved_at = {"epoch": start_epoch, "step": position["step"] if position else 0}
        if position:
            print(f"  resuming from {ckpt_file} in {describe(saved_at, steps)}")
        else:
            print(f"  resuming from {ckpt_file} after epoch {start_epoch}")

    run_args = dict(vars(args), lr=lr, out=out)
    started = time.time()
    every_kind, every = args.checkpoint_every
    last_save = time.monotonic()

    def save_checkpoint(epochs_done, where):
        nonlocal saved_at, last_save
        if not lead:      # the state is the same on every rank: rank 0 saves it
            return
        opt_meta, opt_arrays = optimizer.state_dict()
        stop_meta, best_arrays = stopper.state_dict()
        opt_arrays = dict(opt_arrays, **{BEST_PREFIX[4:] + k: v for k, v in best_arrays.items()})
        with ctrl_c_deferred():
            write_output(ckpt_file, lambda: save_model(ckpt_file, model, checkpoint={
                "epoch": epochs_done, "position": where, "args": run_args,
                "optimizer": opt_meta, "rng": rng.bit_generator.state,
                "model_rng": model.rng.bit_generator.state, "history": history,
                "early_stopping": stop_meta, "data_sha256": fingerprint},
                optimizer_arrays=opt_arrays))
            saved_at = {"epoch": epochs_done, "step": where["step"] if where else 0}
        last_save = time.monotonic()

    def on_step_end(epoch, done, position):
        due = ((epoch * steps + done) % every == 0 if every_kind == "steps"
               else time.monotonic() - last_save >= every)
        if not due:
            return
        where = position()
        # Never checkpoint a diverged model: the epoch's end reports it.
        if np.isfinite(where["loss_sum"]) and all(
                np.isfinite(param).all() for _, param, _, _ in model.parameters()):
            save_checkpoint(epoch, where)

    def on_epoch_end(epoch, metrics):
        history.append(metrics)
        stop = stopper.update(model, metrics) if watching else False
        save_checkpoint(epoch + 1, None)
        return stop

    def saved_text():
        if saved_at is None:
            return ("this run saved no checkpoint yet, so there is nothing to resume"
                    + (f" ({ckpt_file} is an earlier run's)" if os.path.exists(ckpt_file)
                       else ""))
        return f"{describe(saved_at, steps)} is saved in {ckpt_file}; continue with: " \
               f"{resume_command(ckpt_file)}"

    from cnn.backends import get_backend as _ops
    loss_fn = _ops(args.backend).softmax_cross_entropy
    augment = ({"shift": 0 if args.augment == "flip" else args.shift,
                "flip": args.augment != "shift", "fill": normalizer.background}
               if args.augment else None)
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]
    try:
        print(f"  writing {out}", flush=True)
        if stopper.stopped_epoch is not None:
            print(f"  the checkpoint's run stopped early after epoch {stopper.stopped_epoch}; "
                  f"nothing to train")
        elif start_epoch >= args.epochs:
            print(f"  the checkpoint already holds {start_epoch} epochs; nothing to train "
                  f"(raise --epochs to continue)")
        else:
            fit(model, loss_fn, optimizer, schedule, (x_train, tr_y), (x_val, va_y),
                epochs=args.epochs, batch_size=args.batch_size, rng=rng,
                start_epoch=start_epoch, position=position, augment=augment,
                on_epoch_end=on_epoch_end, on_step_end=on_step_end if lead else None,
                progress=progress, comm=comm)
        if stopper.stopped_epoch is not None:
            n = args.early_stopping
            print(f"early stopping: {args.monitor} has not improved for {n} "
                  f"epoch{'s' if n != 1 else ''} (best {stopper.best:.4f} after epoch "
                  f"{stopper.best_epoch})")
        last_epoch = history[-1]["epoch"] if history else 0
        kept = stopper.finish(model, last_epoch) if history else None
        if kept is not None and kept != last_epoch:
            print(f"keeping epoch {kept}'s weights (--keep best)")

        test_loss, test_acc = evaluate_logits(model, x_test, data.test_labels, comm=comm)
        summary = {
            "arch": args.arch, "epochs": len(history), "kept_epoch": kept,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "val_accuracy": history[kept - 1]["val_acc"] if history else None,
            "train_accuracy": history[kept - 1]["acc"] if history else None,
            "dataset": data.name, "train_images": len(x_train),
            "optimizer": args.optimizer, "lr": lr, "batch_size": args.batch_size,
            "augment": args.augment,
            "shift": args.shift if args.augment in ("shift", "both") else None,
            "seed": args.seed, "backend": model.backend,
            "threads": threads, "ranks": comm.size if comm is not None else 1,
            "seconds": round(time.time() - started, 1),
            "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "cnn_version": __version__,
        }
        if watching:
            summary["early_stopping"] = stopper.describe()
        if record:      # image folders and .npz: shape, channel order, resize, the split
            summary["data"] = dict(record, val_fraction=None if val_folder else
                                   args.val_fraction, val_images=len(x_val))
        if not lead:
            return 0
        write_output(out, lambda: save_model(out, model, summary))
        hist_file, csv_file, png_file = (sidecar(out, ".history.json"),
                                         sidecar(out, ".history.csv"), sidecar(out, ".png"))
        write_output(hist_file, lambda: run_history.write_json(hist_file, summary, history))
        write_output(csv_file, lambda: run_history.write_csv(csv_file, history))
        title = (f"{os.path.basename(out)}: {args.arch} on {data.name}, "
                 f"test accuracy {test_acc:.4f}" if test_acc is not None else None)
        write_output(png_file, lambda: run_history.plot(
            png_file, history, title, kept if kept != last_epoch else None))
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        if lead:        # (the checkpoint is rank 0's)
            print(f"\n{what}: {saved_text()}", file=sys.stderr, flush=True)
        return interrupted_status(exc)
    except OutputError as exc:
        return fail(f"{exc}; {saved_text()}", IO_ERROR)
    except FloatingPointError as exc:
        return fail(str(exc), 1)
    print(f"test_loss: {test_loss:.4f} - test_acc: {test_acc:.4f}")
    print(f"saved {out} (history {hist_file}, {os.path.basename(csv_file)}, curves "
          f"{png_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
