"""Training over MPI on this machine, and what it projects to for several machines.

    python benchmarks/distributed.py [--arch convnet] [--limit 12800] [--latency-us 30]

Prints three tables:

1. one epoch of ``python -m cnn.train`` (``--limit`` images, batch 64) as
   2 MPI ranks x 1 thread against 1 process x 2 threads: epoch time, images/s
   and the accuracies (they should agree: the two runs compute the same weights);
2. the gradient Allreduce of the model between 2 ranks, per step: the bare
   ``Allreduce`` of its float32 gradients, and the whole exchange training does
   (packing into the flat buffer, Allreduce, unpacking), median of ``--repeat``;
3. a projection for 4, 8 and 16 machines (each as this one, running one rank of
   ``--threads``) on 10 and 25 Gbit/s Ethernet, from the measured compute time
   of a step and the ring-Allreduce cost model

       T_allreduce(N) = 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency

   (each of the 2(N-1) ring steps sends bytes/N and pays one latency;
   ``--latency-us`` per message, default 30 us for TCP over a switch).
   Speedup with each machine keeping a batch of 64 (the global batch grows to
   64 N: Horovod's usual recipe) is N * t_step / (t_step + T_allreduce), no
   overlap of communication with backward assumed; with the global batch kept
   at 64 it is at best t_step / (t_step / N + T_allreduce) (slices of 64/N
   images run less efficiently than this assumes).

Runs ``mpiexec`` (``pip install 'cnn[mpi]'``) on this machine only; as root it
sets OMPI_ALLOW_RUN_AS_ROOT. Run it on a quiet machine: it times training.
``--limit 640 --repeat 5`` is a quick smoke test.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"Epoch 1/1 - ([\d.]+)s - .*?val_acc: ([\d.]+)")
TEST_LINE = re.compile(r"test_acc: ([\d.]+)")


def mpi_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("CNN_NUM_THREADS", None)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def epoch(args, ranks, threads, out):
    command = [sys.executable, "-m", "cnn.train", "--arch", args.arch, "--epochs", "1",
               "--limit", str(args.limit), "--batch-size", "64", "--threads", str(threads),
               "--progress", "lines", "--checkpoint-every", "100000", "--out", out]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if ranks > 1:
        command = [args.mpiexec, "--oversubscribe", "-n", str(ranks), *command]
    result = subprocess.run(command, env=mpi_env(), capture_output=True, text=True,
                            timeout=args.timeout)
    found, test = EPOCH_LINE.search(result.stdout), TEST_LINE.search(result.stdout)
    if result.returncode or not found or not test:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return float(found.group(1)), float(found.group(2)), float(test.group(1))


def allreduce_worker(args):
    """Run under mpiexec: time the model's gradient exchange; rank 0 prints ms."""
    from mpi4py import MPI

    from cnn.architectures import build_architecture
    from cnn.distributed import GradientReducer, connect
    comm = connect(True)
    model = build_architecture(args.arch, 10, (1, 28, 28)).build(seed=0)
    for _, param, grads, name in model.parameters():
        grads[name] = np.ones_like(param)
    reducer = GradientReducer(comm, model)
    bare = np.ones(reducer.buffer.size - reducer.extras, np.float32)
    times = {"bare": [], "exchange": []}
    for _ in range(args.repeat + 3):        # the first 3 warm up
        comm.comm.Barrier()
        start = time.perf_counter()
        comm.comm.Allreduce(MPI.IN_PLACE, bare)
        times["bare"].append(time.perf_counter() - start)
        comm.comm.Barrier()
        start = time.perf_counter()
        reducer.reduce([0.0, 0.0])
        times["exchange"].append(time.perf_counter() - start)
    if comm.rank == 0:
        print(f"{bare.size} {statistics.median(times['bare'][3:]) * 1e3:.4f} "
              f"{statistics.median(times['exchange'][3:]) * 1e3:.4f}")


def allreduce_cost(args):
    command = [args.mpiexec, "--oversubscribe", "-n", "2", sys.executable, __file__,
               "--allreduce-worker", "--arch", args.arch, "--repeat", str(args.repeat)]
    result = subprocess.run(command, env=mpi_env(), capture_output=True, text=True,
                            timeout=args.timeout)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    count, bare, exchange = result.stdout.split()[-3:]
    return int(count), float(bare), float(exchange)


def ring_allreduce_s(machines, nbytes, gbit_s, latency_s):
    if machines == 1:
        return 0.0
    return (2 * (machines - 1) / machines * nbytes / (gbit_s * 1e9 / 8)
            + 2 * (machines - 1) * latency_s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="convnet")
    p.add_argument("--data-dir", default=None, help="default: cnn.train's")
    p.add_argument("--limit", type=int, default=12800,
                   help="training images of the timed epoch (default: 12800, 180 steps)")
    p.add_argument("--repeat", type=int, default=50, help="timed Allreduce calls (50)")
    p.add_argument("--latency-us", type=float, default=30.0,
                   help="per-message latency of the projection (default: 30)")
    p.add_argument("--machines", default="4,8,16")
    p.add_argument("--gbits", default="10,25", help="link speeds, Gbit/s (10,25)")
    p.add_argument("--timeout", type=float, default=1800, help="per run, seconds")
    p.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.repeat <= 10000 or not 64 <= args.limit:
        p.error("--repeat must be in 1..10000 and --limit at least 64")
    if args.allreduce_worker:
        return allreduce_worker(args)
    args.mpiexec = shutil.which("mpiexec")
    if args.mpiexec is None:
        p.error("no mpiexec: pip install 'cnn[mpi]'")

    with tempfile.TemporaryDirectory() as tmp:
        two = epoch(args, 2, 1, os.path.join(tmp, "ranks.npz"))
        one = epoch(args, 1, 2, os.path.join(tmp, "one.npz"))
    # --limit images less the 10% validation split, in steps of 64.
    steps = -(-(args.limit - round(args.limit * 0.1)) // 64)
    print(f"one epoch of {args.arch}, {args.limit:,} images (90% trained: {steps} steps "
          f"of 64)")
    print(f"{'run':<26} {'epoch (s)':>10} {'images/s':>9} {'step (ms)':>10} "
          f"{'val_acc':>8} {'test_acc':>9}")
    for name, (seconds, val, test) in (("2 MPI ranks x 1 thread", two),
                                       ("1 process x 2 threads", one)):
        print(f"{name:<26} {seconds:>10.2f} {steps * 64 / seconds:>9.0f} "
              f"{seconds / steps * 1e3:>10.2f} {val:>8.4f} {test:>9.4f}")
    print(f"2 ranks / 1 process: {two[0] / one[0]:.2f}x the time\n")

    count, bare, exchange = allreduce_cost(args)
    step_ms = one[0] / steps * 1e3
    print(f"gradient Allreduce between 2 ranks ({count:,} float32 = {count * 4 / 2**20:.2f} "
          f"MiB, median of {args.repeat})")
    print(f"  Allreduce alone {bare:.3f} ms; pack + Allreduce + unpack {exchange:.3f} ms "
          f"= {exchange / step_ms:.1%} of a {step_ms:.1f} ms step\n")

    nbytes, latency = count * 4, args.latency_us * 1e-6
    machines = [int(m) for m in args.machines.split(",")]
    print(f"projection: ring Allreduce 2(N-1)/N * {nbytes / 1e6:.2f} MB / bandwidth "
          f"+ 2(N-1) * {args.latency_us:g} us; step {step_ms:.1f} ms (1 process x 2 threads, "
          f"measured)")
    print(f"{'machines':>8} {'Gbit/s':>7} {'allreduce (ms)':>15} {'speedup, 64/machine':>20} "
          f"{'speedup, global 64':>19}")
    for gbit in (float(g) for g in args.gbits.split(",")):
        for n in machines:
            t = ring_allreduce_s(n, nbytes, gbit, latency) * 1e3
            weak = n * step_ms / (step_ms + t)
            strong = step_ms / (step_ms / n + t)
            print(f"{n:>8} {gbit:>7g} {t:>15.3f} {weak:>19.2f}x {strong:>18.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
