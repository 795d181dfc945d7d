"""Training over MPI (cnn.distributed): N ranks compute what one process computes,
rank 0 alone writes and prints, a checkpoint resumes with another number of
ranks, and a rank that fails, dies or hangs ends the whole job.

The mpiexec tests run 2 ranks on loopback, each bounded by a timeout; they are
skipped (with the reason) only when mpiexec or mpi4py is missing
(``pip install 'cnn[mpi]'``, which scripts/setup.sh installs).
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from cnn import distributed
from cnn.backends import BackendUnavailable, get_backend
from cnn.distributed import Communicator, DistributedError
from cnn.io import read_model_file
from cnn.reference.batchnorm import batchnorm2d_backward, batchnorm2d_forward

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpiexec and mpi4py: pip install 'cnn[mpi]' (scripts/setup.sh installs it)")

# 717 images: 645 train after the 10% validation split, so 11 steps of 64 an
# epoch and a last batch of 5, sliced 2 + 3 (uneven slices are weighted by size).
N_TRAIN = 717
COMMON = ["--data-dir", "data", "--threads", "1", "--progress", "lines", "--limit", N_TRAIN,
          "--batch-size", 64, "--checkpoint-every", "1000"]
# Dropout and augmentation: their draws must be the whole batch's on every rank.
PLAIN = ["--arch", "conv4k3p1-relu-maxpool2-flatten-dropout0.3-dense10", "--augment", "both"]
# Batch norm, with SGD: Adam turns the rounding noise of the zero gradient of a
# bias before batch norm into steps of size lr, which would hide a real error.
BATCH_NORM = ["--arch", "conv4k3p1-bn-relu-maxpool2-conv8k3p1-bn-relu-maxpool2-flatten-dense10",
              "--optimizer", "sgd", "--lr", "0.02"]
# float32: the gradients summed in another order (two slices, then the Allreduce)
# move the weights a little; measured after 33 steps: 3e-8 without batch norm,
# 2.4e-7 with (its statistics are summed in NumPy, not by the kernel). Every
# error planted while writing this (equal weights for uneven slices, per-rank
# batch norm, dropout or augmentation drawn per slice) gave 1e-3 or more.
ATOL = 1e-5


def env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for key in ("CNN_BACKEND", "CNN_NUM_THREADS", "CNN_DATA_DIR", distributed.FAULT_VARIABLE):
        env.pop(key, None)
    # Open MPI refuses root without these; CI runs as root.
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(extra)
    return env


def train(cwd, *args, ranks=None, timeout=60, environ=None, mpmd_out=None):
    """python -m cnn.train, on one process or ``ranks`` mpiexec ranks. mpmd_out:
    (rank 0's --out, rank 1's --out), two ranks started with different --out."""
    command = [sys.executable, "-m", "cnn.train", *map(str, COMMON), *map(str, args)]
    if mpmd_out:
        command = [MPIEXEC, "--oversubscribe", "--output", "tag",
                   "-n", "1", *command, "--out", mpmd_out[0], ":",
                   "-n", "1", *command, "--out", mpmd_out[1]]
    elif ranks:
        command = [MPIEXEC, "--oversubscribe", "-n", str(ranks), *command]
    # A session of its own, so that a run past its timeout is killed with every
    # rank mpiexec started (a rank left behind would spin in its Allreduce).
    with subprocess.Popen(command, cwd=cwd, env=environ or env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            stdout, stderr = proc.communicate()
            pytest.fail(f"still running after {timeout} s: {command}\n{stdout}{stderr}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def kill_session(sid):
    """SIGKILL every process of session ``sid`` (mpiexec puts each rank in a
    process group of its own, but they stay in its session)."""
    for entry in Path("/proc").iterdir():
        try:
            # /proc/PID/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[3]) == sid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            pass


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def weights(path):
    return {k: v for k, v in read_model_file(str(path))[1].items() if v.dtype.kind == "f"}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    print(f"largest weight difference: {worst:.3g}")     # (pytest -s shows it)
    assert worst <= ATOL, f"largest difference {worst:.3g} > {ATOL}"
    return worst


@pytest.fixture
def workdir(tmp_path, make_idx_dir):
    make_idx_dir("data", n_train=N_TRAIN, n_test=40)
    return tmp_path


# -- mpiexec ---------------------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("arch", [PLAIN, BATCH_NORM], ids=["dropout-augment", "batch-norm"])
def test_two_ranks_train_what_one_process_trains(workdir, arch):
    args = [*arch, "--epochs", 3]
    ok(train(workdir, *args, "--out", "one/m.npz"))
    two = ok(train(workdir, *args, mpmd_out=("r0/m.npz", "r1/m.npz")))
    assert_same_weights(workdir / "one/m.npz", workdir / "r0/m.npz")
    # Rank 0 alone writes (rank 1 was given another --out) and prints.
    assert not (workdir / "r1").exists()
    lines = two.stdout.splitlines()
    assert lines and all(line.startswith("[1,0]<stdout>") for line in lines), two.stdout
    assert "2 MPI ranks x 1 threads" in two.stdout
    # The printed metrics are the whole batch's: the same as the one process's.
    one_log = (workdir / "one/m.history.csv").read_text().splitlines()
    two_log = (workdir / "r0/m.history.csv").read_text().splitlines()
    column = one_log[0].split(",").index("val_loss")
    assert [round(float(r.split(",")[column]), 4) for r in one_log[1:]] == \
        [round(float(r.split(",")[column]), 4) for r in two_log[1:]]


@needs_mpi
def test_killed_rank_ends_the_job_and_one_process_resumes_its_checkpoint(workdir):
    args = [*PLAIN, "--epochs", 2, "--checkpoint-every", 4]
    ok(train(workdir, *args, "--out", "one/m.npz"))
    started = time.monotonic()
    killed = train(workdir, *args, "--out", "two/m.npz", ranks=2,
                   environ=env(CNN_TEST_FAULT="kill:1:16"))
    assert killed.returncode != 0
    assert time.monotonic() - started < 40
    assert "rank 1 dies before step 16" in killed.stderr
    assert "signal 9" in killed.stderr or "Killed" in killed.stderr, killed.stderr
    assert not (workdir / "two/m.npz").exists()
    # Rank 0 saved step 12 (epoch 2, step 1) before rank 1 reached step 16; one
    # process continues that 2-rank checkpoint.
    resumed = ok(train(workdir, "--resume", "two/m.ckpt"))
    assert "resuming from two/m.ckpt in epoch 2 at step 1/11" in resumed.stdout
    assert_same_weights(workdir / "one/m.npz", workdir / "two/m.npz")


@needs_mpi
def test_hung_rank_ends_the_job_within_the_timeout(workdir):
    started = time.monotonic()
    hung = train(workdir, *PLAIN, "--epochs", 1, "--out", "m.npz", "--mpi-timeout", 2,
                 ranks=2, environ=env(CNN_TEST_FAULT="hang:1:3"), timeout=40)
    assert hung.returncode != 0
    assert time.monotonic() - started < 30
    assert ("rank 0 of 2 waited 2 s for the other ranks in the gradient allreduce "
            "(epoch 1, step 3)") in hung.stderr, hung.stderr
    assert "--mpi-timeout" in hung.stderr


@needs_mpi
def test_an_error_on_one_rank_ends_the_job(workdir):
    # Only rank 0 checks the output (it alone writes): rank 1 must not be left
    # waiting for it in the first collective.
    (workdir / "file").write_text("not a folder")
    started = time.monotonic()
    failed = train(workdir, *PLAIN, "--epochs", 1, "--out", "file/m.npz", ranks=2,
                   timeout=40)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert time.monotonic() - started < 30
    assert "cnn.train: error: " in failed.stderr and "file" in failed.stderr


@needs_mpi
def test_every_rank_needs_an_image_of_each_batch(workdir):
    # 645 training images, batch 644: the last batch holds 1 image for 2 ranks.
    failed = train(workdir, *PLAIN, "--batch-size", 644, "--out", "m.npz", ranks=2,
                   timeout=40)
    assert failed.returncode == 2
    assert "--batch-size 644: every batch needs an image for each of the 2 ranks" \
        in failed.stderr


# -- without mpiexec -------------------------------------------------------------

def test_one_process_never_imports_mpi(workdir):
    code = ("import sys, cnn.train; code = cnn.train.main(sys.argv[1:]); "
            "sys.exit(3 if 'mpi4py' in sys.modules else code)")
    result = subprocess.run([sys.executable, "-c", code, *map(str, COMMON), *PLAIN,
                             "--epochs", "1", "--limit", "200", "--out", "m.npz"],
                            cwd=workdir, env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("how", [["--distributed"], []], ids=["flag", "launcher"])
def test_without_mpi4py_a_one_line_error(workdir, how):
    blocker = workdir / "blocked" / "mpi4py"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    environ = env(PYTHONPATH=os.pathsep.join([str(blocker.parent), str(ROOT)]))
    if not how:
        environ.update(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
    result = train(workdir, *PLAIN, *how, "--out", "m.npz", environ=environ)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cnn[mpi]'" in lines[0], result.stderr
    assert ("--distributed" if how else "OMPI_COMM_WORLD_SIZE=2") in lines[0]
    assert not (workdir / "m.npz").exists()


@pytest.mark.parametrize("environ, launched", [
    ({}, False), ({"OMPI_COMM_WORLD_SIZE": "1"}, False), ({"OMPI_COMM_WORLD_SIZE": "4"}, True),
    ({"PMI_SIZE": "2"}, True), ({"PMIX_RANK": "0"}, True), ({"SLURM_NTASKS": "4"}, False),
    # srun --mpi=pmix: a one-task step is a single process, a several-task step is not
    ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "1"}, False),
    ({"PMIX_RANK": "1", "SLURM_STEP_NUM_TASKS": "4"}, True)])
def test_launcher_detection(environ, launched):
    assert distributed.launched_by_mpi(environ) is launched
    if not launched:
        assert distributed.connect(False, environ=environ) is None


def test_fault_variable_is_checked():
    assert distributed.parse_fault("hang:1:3") == ("hang", 1, 3)
    with pytest.raises(DistributedError, match="CNN_TEST_FAULT='hang:x'"):
        distributed.parse_fault("hang:x")


@pytest.mark.parametrize("affinity, local_ranks, threads", [(8, 2, 4), (2, 2, 1), (3, 2, 1),
                                                             (1, 4, 1)])
def test_threads_divide_the_cores_among_the_ranks(monkeypatch, affinity, local_ranks, threads):
    monkeypatch.delenv("CNN_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: affinity)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr("cnn._threads.available_cores", lambda: affinity)
    assert distributed.threads_per_rank(local_ranks) == threads
    assert distributed.threads_per_rank(local_ranks, requested=3) == 3
    # A rank bound to its own cores (fewer than the machine's) uses them all.
    monkeypatch.setattr(os, "cpu_count", lambda: 4 * affinity)
    assert distributed.threads_per_rank(local_ranks) == affinity


def test_slices_cover_the_batch_in_order():
    for size in (1, 2, 3, 7):
        for n in (size, 5, 64, 65):
            if n < size:
                continue
            parts = [Communicator.share(types.SimpleNamespace(rank=r, size=size), n)
                     for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert {hi - lo for lo, hi in parts} <= {n // size, -(-n // size)}


class SummedByHand:
    """A rank's communicator stand-in: its Allreduce returns the sum of every
    rank's buffer, computed beforehand by the test."""

    def __init__(self, totals):
        self.totals = totals

    def sum_(self, buf, what=""):
        buf[...] = self.totals[what]
        return buf


@pytest.mark.parametrize("backend", ["python", "cython"])
def test_synchronised_batch_norm_equals_the_whole_batch(backend):
    try:
        ops = get_backend(backend)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 3, 4, 5)) * 2 + 1).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = rng.random(3).astype(np.float32) + 0.5, rng.random(3).astype(np.float32)
    whole_mean, whole_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    out, cache = batchnorm2d_forward(x, gamma, beta, whole_mean, whole_var, momentum=0.1)
    dx, dgamma, dbeta = batchnorm2d_backward(dout, cache)

    # Three ranks holding 2, 2 and 3 images of the batch.
    slices = [slice(0, 2), slice(2, 4), slice(4, 7)]
    comm = SummedByHand({"the batch-norm statistics": sum(_forward_stats(x[s]) for s in slices)})
    outs, caches = [], []
    for s in slices:
        running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
        o, c = Communicator.batchnorm_forward(comm, x[s], gamma, beta, running_mean,
                                              running_var, 0.1, 1e-5, ops=ops)
        outs.append(o)
        caches.append(c)
        np.testing.assert_allclose(running_mean, whole_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(running_var, whole_var, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(outs), out, atol=1e-5)

    comm.totals["the batch-norm gradients"] = sum(
        _backward_sums(dout[s], c) for s, c in zip(slices, caches))
    parts = [Communicator.batchnorm_backward(comm, dout[s], c, ops=ops)
             for s, c in zip(slices, caches)]
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), dx, atol=1e-5)
    # Each rank's dgamma/dbeta is its own share: the gradient Allreduce adds them.
    np.testing.assert_allclose(sum(p[1] for p in parts), dgamma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sum(p[2] for p in parts), dbeta, rtol=1e-5, atol=1e-5)


def _forward_stats(x):
    C = x.shape[1]
    out = np.empty(2 * C + 1)
    out[:C] = x.sum(axis=(0, 2, 3), dtype=np.float64)
    out[C:2 * C] = (x.astype(np.float64) ** 2).sum(axis=(0, 2, 3))
    out[2 * C] = x.shape[0] * x.shape[2] * x.shape[3]
    return out


def _backward_sums(dout, cache):
    (x, gamma, mean, inv_std, _), m = cache
    xhat = (x - mean[:, None, None]) * inv_std[:, None, None]
    return np.concatenate([dout.sum(axis=(0, 2, 3), dtype=np.float64),
                           (dout * xhat).sum(axis=(0, 2, 3))])
