"""Benchmarks (not tests).

``python -m cnn.bench`` (or ``python -m cnn.bench all``): every speed target of
the project measured in one run, printed as ONE table: our figure, PyTorch's
(NCHW and channels_last) and ONNX Runtime's when they are importable, the
ratios, the goal and whether it is met, and "% peak": the row's GFLOP/s over a
BLAS SGEMM measured at the start (a practical peak). The line above the table
names the CPU and the kernels' build that ran:

    convnet/lenet5 train epoch (s)   60,000 images, batch 64, float32: faster than
                                     PyTorch's best (convnet), at most 0.8x its time (lenet5)
    convnet accuracy, N epochs       the `python -m cnn.train` recipe in cnn and in PyTorch
                                     on Fashion-MNIST: test accuracy within 0.5 points
    time to 93% test acc (min)       README's recipe for 93% (`python -m cnn.train`):
                                     at most 5 minutes of training
    convnet/lenet5 infer b64 (img/s) at least 3x (convnet) / 2x (lenet5) PyTorch's images/s,
                                     and 1.0x (convnet) / 0.8x (lenet5) ONNX Runtime's
    convnet/lenet5 infer b1 (ms)     batch-1 latency below PyTorch's, at most 1.5x ORT's
    conv fwd+bwd / convnet step      2 threads at least 1.7x the speed of 1 thread
    HTTP b64 / in-process            /predict with 64 images under 2 gunicorn workers at
                                     least 70% of in-process images/s (python -m cnn.bench.serve)
    peak RSS convnet training (MiB)  a full-data `python -m cnn.train` epoch under 1 GiB

Options: ``--threads N`` (default: CNN_NUM_THREADS or all cores), ``--quick``
(few repeats; skips accuracy, time to accuracy and HTTP: a smoke test),
``--skip train,accuracy,tta,infer,latency,scaling,http,memory``, ``--accuracy-epochs N``
(default 1, 0 skips), ``--data-dir DIR``, ``--json PATH`` (every figure as
JSON). Each row is measured on its own: a failure prints ``error: ...`` in
that row and the others still run. The comparison packages are never
dependencies; install them with ``pip install torch==2.13.0 onnxruntime onnx``.
PyTorch and ONNX Runtime always run in child processes with the caller's own
environment (``import cnn`` sets OMP_WAIT_POLICY=PASSIVE for its OpenMP
runtime when the user has not, which would also slow PyTorch's).

``python -m cnn.bench kernels``: one table per op: shape, direction, median
milliseconds for the Cython, NumPy-im2col and naive backends (naive only on the
small shapes, where its loops finish), the speedups, and GFLOP/s for convolution.

``python -m cnn.bench train``: one training epoch of lenet5 and convnet on
Fashion-MNIST-sized batches (60,000 images, batch 64, float32) on the Cython
and the NumPy backends, and in PyTorch when it is importable (a comparison
only, never a dependency: ``pip install torch``), with the ratios. By default
an epoch is timed as the median step time of ``--steps`` steps times the
epoch's step count; ``--full-epoch`` times whole epochs.

Every subcommand takes ``--coretype NAME`` (repeatable) to rerun itself under
``OPENBLAS_CORETYPE=NAME``. Run them on a quiet machine: every figure is a
median of repeated calls, and the measurements run one after the other.
"""
import argparse
import os
import subprocess
import sys

from cnn._cli import non_negative_int
from cnn._threads import resolve_threads
from cnn.bench.kernels import run_kernels
from cnn.bench.targets import ROW_GROUPS, run_all
from cnn.bench.train_epoch import run_train

SUBCOMMANDS = ("all", "kernels", "train")


def _skip_list(text):
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in ROW_GROUPS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown row group(s) {', '.join(bad)}; choose from {', '.join(ROW_GROUPS)}")
    return names


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m cnn.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("all", help="every speed target in one table (the default)")
    a.add_argument("--threads", type=int, default=None,
                   help="threads for cnn, PyTorch and ONNX Runtime (default: CNN_NUM_THREADS "
                        "or all cores)")
    a.add_argument("--quick", action="store_true",
                   help="few repeats, no accuracy, time-to-accuracy or HTTP rows (a smoke "
                        "test)")
    a.add_argument("--skip", type=_skip_list, default=[], metavar="ROWS",
                   help=f"comma-separated row groups to leave out: {','.join(ROW_GROUPS)}")
    a.add_argument("--accuracy-epochs", type=non_negative_int, default=1, metavar="N",
                   help="epochs of the accuracy comparison (default 1; 0 skips it)")
    a.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST IDX folder (default: CNN_DATA_DIR, else "
                        "/usr/share/datasets/fashion-mnist)")
    a.add_argument("--json", default=None, metavar="PATH", dest="json_path",
                   help="also write every figure to PATH as JSON")
    a.add_argument("--steps", type=int, default=None,
                   help="training steps timed per epoch figure (default 40, --quick 5)")
    a.add_argument("--repeat", type=int, default=None,
                   help="timed calls per inference figure, at least (default 30, --quick 3)")
    a.add_argument("--serve-script", default=None, metavar="PATH",
                   help="the HTTP benchmark script to run (default: python -m "
                        "cnn.bench.serve)")
    a.add_argument("--http-requests", type=int, default=200,
                   help="cnn.bench.serve --requests (default 200)")
    a.add_argument("--http-seconds", type=float, default=20,
                   help="cnn.bench.serve --seconds (default 20)")
    a.add_argument("--http-format", default=None, metavar="FORMATS",
                   help="cnn.bench.serve --format: png, npy or png,npy (default: its own, png)")
    a.add_argument("--coretype", action="append", default=None, metavar="NAME",
                   help="rerun under OPENBLAS_CORETYPE=NAME (repeatable)")
    k = sub.add_parser("kernels", help="every op, forward and backward, per backend")
    k.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    k.add_argument("--threads", type=int, default=None,
                   help="kernel threads (default: CNN_NUM_THREADS or all cores)")
    k.add_argument("--repeat", type=int, default=15, help="timed calls per figure (min)")
    k.add_argument("--coretype", action="append", default=None, metavar="NAME",
                   help="rerun under OPENBLAS_CORETYPE=NAME (repeatable, e.g. Haswell "
                        "SkylakeX); default: the environment as it is")
    t = sub.add_parser("train", help="one training epoch: cython vs numpy vs PyTorch")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--steps", type=int, default=40, help="steps timed per figure")
    t.add_argument("--full-epoch", action="store_true", help="time whole epochs")
    t.add_argument("--arch", action="append", default=None,
                   help="lenet5 and/or convnet (default: both)")
    t.add_argument("--coretype", action="append", default=None, metavar="NAME")
    return parser


def normalize_argv(argv):
    """No subcommand means ``all``: ``python -m cnn.bench --quick`` is
    ``python -m cnn.bench all --quick``."""
    argv = list(argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv.insert(0, "all")
    return argv


def main(argv=None):
    argv = normalize_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    threads = resolve_threads(args.threads)
    if args.coretype:
        for name in args.coretype:
            if name.lower().startswith("skylakex") and not _has_avx512():
                print(f"skipping OPENBLAS_CORETYPE={name}: this CPU has no AVX-512",
                      flush=True)
                continue
            env = dict(os.environ, OPENBLAS_CORETYPE=name)
            rest = argv[1:]
            cmd = [sys.executable, "-m", "cnn.bench", args.what] + _without_coretype(rest)
            print(f"\n=== OPENBLAS_CORETYPE={name}", flush=True)
            subprocess.run(cmd, env=env, check=True)
        return 0
    if args.what == "kernels":
        run_kernels(args.dtype, threads, args.repeat)
    elif args.what == "train":
        run_train(threads, args.batch_size, args.steps, args.full_epoch,
                  args.arch or ["lenet5", "convnet"])
    else:
        run_all(threads, quick=args.quick, skip=args.skip, steps=args.steps,
                repeat=args.repeat, accuracy_epochs=args.accuracy_epochs,
                data_dir=args.data_dir, json_path=args.json_path, serve=args.serve_script,
                http_requests=args.http_requests, http_seconds=args.http_seconds,
                http_format=args.http_format)
    return 0


def _without_coretype(argv):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--coretype":
            skip = True
        elif not a.startswith("--coretype="):
            out.append(a)
    return out


def _has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return any("avx512f" in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False
