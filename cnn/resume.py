"""What ``--resume`` restores: the run's settings, checked against the flags
given now, and where the checkpoint stands.

A checkpoint records the run as it was started (``RUN_SETTINGS``: changing one
would silently make another run, so it is an error; ``--epochs`` may change),
where its data came from and how it was computed (``PLACE_SETTINGS``: restored
unless given), and a digest of the training images, so a resumed run can tell
it got the same data.
"""
import argparse
import hashlib
import os
import shlex
import sys

import numpy as np

# Checkpoints keep the best epoch's weights (--keep best) beside the optimizer's
# state, as the optimizer-state slot "_best" (no optimizer has a slot of that name).
BEST_PREFIX = "opt/_best/"


# What a checkpoint restores: the run as it was started. --epochs may change
# (the length is the user's choice); the rest would silently make another run.
RUN_SETTINGS = ("arch", "epochs", "batch_size", "optimizer", "lr", "momentum",
                "weight_decay", "schedule", "augment", "shift", "early_stopping", "monitor",
                "keep", "val_fraction", "limit", "seed",
                "image_size", "channels", "test_fraction")


# Restored unless given: where the data is (checked by content) and how to compute.
PLACE_SETTINGS = ("data_dir", "threads", "backend", "cache_dir", "strict")


def flag(key):
    return "--" + key.replace("_", "-")


def parse_args(parser, argv):
    """(args, the dests given on the command line): a resumed run needs to know
    which values the user chose and which are mere defaults."""
    unset = object()
    dests = vars(parser.parse_args([]))
    args = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(dests, unset)))
    given = {key for key, value in vars(args).items() if value is not unset}
    for key in set(dests) - given:
        setattr(args, key, dests[key])
    return args, given


def restore_run(args, given, saved, done):
    """Set ``args`` to the checkpointed run's settings (``saved``); ``done``: its
    finished epochs. Returns (error or None, notes to print)."""
    notes = []
    for key in RUN_SETTINGS:
        if key not in saved:                    # a checkpoint of an older cnn
            continue
        value, old = getattr(args, key), saved[key]
        if key in given and key != "epochs" and value != old:
            return (f"{flag(key)} {value} differs from the resumed run's {flag(key)} "
                    f"{old}: leave it out to continue that run, or start a new run with "
                    f"another --out"), notes
        setattr(args, key, old if key not in given else value)
    if "epochs" in given and args.epochs != saved.get("epochs", args.epochs):
        if args.epochs < done:
            return (f"--epochs {args.epochs}: the checkpoint already holds {done} "
                    f"epochs"), notes
        notes.append(
            f"changing the run's length from {saved['epochs']} to {args.epochs} epochs: "
            + ("the learning rate is constant, so the schedule does not change"
               if args.schedule == "constant" else
               f"the {args.schedule} learning-rate schedule now spans {args.epochs} "
               f"epochs, so the rest of the run differs from the {saved['epochs']}-epoch "
               f"run's"))
    for key in PLACE_SETTINGS:
        if key not in given:
            setattr(args, key, saved.get(key))
        elif key != "data_dir" and saved.get(key) is not None and \
                getattr(args, key) != saved[key]:
            notes.append(f"{flag(key)} {getattr(args, key)} (the run used {saved[key]}): "
                         f"the weights will not match an uninterrupted run bit for bit")
    return None, notes


def data_fingerprint(images, labels):
    """A digest of the training data, so a resumed run can tell it got the same."""
    digest = hashlib.sha256()
    for array in (images, labels):
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def describe(saved, steps):
    """Where a checkpoint stands: {"epoch": finished epochs, "step": steps into
    the next one or 0}."""
    if saved["step"]:
        return f"epoch {saved['epoch'] + 1} at step {saved['step']}/{steps}"
    return f"epoch {saved['epoch']} (finished)"


def resume_command(ckpt):
    return f"{os.path.basename(sys.executable) or 'python3'} -m cnn.train --resume " \
           f"{shlex.quote(ckpt)}"
