"""Data-parallel training over MPI (the Horovod pattern): ``mpiexec -n N python
-m cnn.train ...`` runs N ranks that train one model.

Every rank draws the same batch order and augmentation (same seeds) and takes
its contiguous slice of each global batch; the gradients of the slices, each
already weighted by its share of the batch, are summed with one ``Allreduce``
over a flat float32 buffer, so every rank applies the global batch's mean
gradient and the parameters stay identical on all ranks. Batch norm sums its
per-channel statistics over the ranks (``batchnorm_forward/backward``), so N
ranks compute what one process computes on the whole batch, up to float32
rounding.

mpi4py is imported only when a run is distributed (an MPI launcher's
environment or ``--distributed``): a single process never loads MPI.

No rank waits forever: a watchdog thread ends the whole job (``MPI_Abort``)
when a collective has not completed within ``timeout`` seconds, which is how a
rank that died or hangs shows up to the others. A blocking collective with a
watchdog beside it costs nothing per call, unlike polling a non-blocking one.
"""
import contextlib
import os
import signal
import sys
import threading
import time

import numpy as np

# Set by the launchers in each rank's environment: Open MPI, MPICH/Intel MPI/
# srun --mpi=pmi2, MVAPICH. PMIx (srun --mpi=pmix) only gives the rank; srun
# also says how many tasks its job step has (SLURM_STEP_NUM_TASKS, set inside
# a step only, unlike SLURM_NTASKS, which a batch script sees too), so a
# one-task `srun python -m cnn.train` stays a single process.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_ONLY_VARIABLES = ("PMIX_RANK",)
STEP_TASKS_VARIABLE = "SLURM_STEP_NUM_TASKS"

DEFAULT_TIMEOUT = 300.0     # seconds a rank waits in a collective before ending the job

INSTALL_HINT = "pip install 'cnn[mpi]' (mpi4py and Open MPI)"

# Test-only fault injection: "kill:RANK:STEP" or "hang:RANK:STEP" makes that rank
# die (SIGKILL) or stop answering before its STEP-th training step of this run.
FAULT_VARIABLE = "CNN_TEST_FAULT"


class DistributedError(Exception):
    """MPI was asked for but cannot be used; the message says why and what to do."""


def launched_by_mpi(environ=None):
    """True when an MPI launcher started this process as one of several ranks (or
    with an unknown number of them: PMIx gives none)."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        if environ.get(name, "").strip().isdigit():
            return int(environ[name]) > 1
    if not any(name in environ for name in RANK_ONLY_VARIABLES):
        return False
    tasks = environ.get(STEP_TASKS_VARIABLE, "").strip()
    return int(tasks) > 1 if tasks.isdigit() else True


def connect(requested=False, timeout=DEFAULT_TIMEOUT, environ=None):
    """The communicator of this run, or None for a single process.

    ``requested``: --distributed. Without it, MPI is used only when a launcher's
    environment says there are several ranks."""
    environ = os.environ if environ is None else environ
    if not (requested or launched_by_mpi(environ)):
        return None
    fault = parse_fault(environ.get(FAULT_VARIABLE))
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:   # no mpi4py, or no MPI library under it
        why = "--distributed" if requested else "started by an MPI launcher (" + next(
            f"{k}={environ[k]}" for k in SIZE_VARIABLES + RANK_ONLY_VARIABLES
            if k in environ) + ")"
        raise DistributedError(f"{why}: training over MPI needs mpi4py and an MPI library: "
                               f"{INSTALL_HINT}; {exc}") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return None
    return Communicator(comm, MPI, timeout, fault)


def parse_fault(text):
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("kill", "hang") or not all(
            p.isdigit() for p in parts[1:]):
        raise DistributedError(f"{FAULT_VARIABLE}={text!r}: expected kill:RANK:STEP or "
                               f"hang:RANK:STEP")
    return parts[0], int(parts[1]), int(parts[2])


def threads_per_rank(local_ranks, requested=None):
    """Kernel threads for each rank: ``requested`` (--threads, else
    CNN_NUM_THREADS) if given, else the cores of this machine divided among the
    ranks on it, at least one. A rank the launcher bound to its own cores
    (Open MPI binds each of 2 ranks to a core) gets those cores."""
    from cnn._threads import available_cores
    if requested is not None:
        return requested
    if os.environ.get("CNN_NUM_THREADS"):
        return None     # the kernels' own default reads it
    cores = available_cores()
    try:
        bound = len(os.sched_getaffinity(0)) < (os.cpu_count() or 1)
    except (AttributeError, OSError):
        bound = False
    return cores if bound else max(1, cores // max(1, local_ranks))


class Communicator:
    """MPI_COMM_WORLD with what training needs: slices of a batch, in-place sums
    under a deadline, synchronised batch norm."""

    def __init__(self, comm, mpi, timeout=DEFAULT_TIMEOUT, fault=None):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_size = comm.Split_type(mpi.COMM_TYPE_SHARED).Get_size()
        self.timeout = float(timeout)
        self.where = None            # the collective under way, for the timeout message
        self.step = None             # (epoch, step) of training, set by the loop
        self._since = None           # when it started (time.monotonic), None: not waiting
        self._fault = fault
        self._steps = 0
        watchdog = threading.Thread(target=self._watch, name="cnn-mpi-watchdog", daemon=True)
        watchdog.start()

    def __repr__(self):
        return f"Communicator(rank {self.rank} of {self.size})"

    # -- slices -------------------------------------------------------------
    def share(self, n):
        """(lo, hi): this rank's contiguous slice of n items; sizes differ by at
        most one, the first ranks taking the remainder."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    # -- collectives --------------------------------------------------------
    @contextlib.contextmanager
    def _deadline(self, what):
        self.where, self._since = what, time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def sum_(self, buf, what="an allreduce"):
        """Sum ``buf`` over the ranks, in place (one Allreduce)."""
        with self._deadline(what):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def broadcast_(self, buf, what="a broadcast"):
        """Overwrite ``buf`` with rank 0's."""
        with self._deadline(what):
            self.comm.Bcast(buf, root=0)
        return buf

    def broadcast(self, obj, what="a broadcast"):
        """Rank 0's value of a small picklable object."""
        with self._deadline(what):
            return self.comm.bcast(obj, root=0)

    def abort(self, code):
        """End every rank of the job now (a rank that fails alone must not leave
        the others waiting in a collective)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)      # (Abort does not return; this is for MPIs whose does)

    def _watch(self):
        poll = min(1.0, self.timeout / 4)
        while True:
            time.sleep(poll)
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                at = f" (epoch {self.step[0]}, step {self.step[1]})" if self.step else ""
                print(f"cnn.train: error: rank {self.rank} of {self.size} waited "
                      f"{self.timeout:g} s for the other ranks in {self.where}{at}: a rank has "
                      f"died or hangs, ending the whole job (--mpi-timeout)",
                      file=sys.stderr, flush=True)
                self.abort(1)

    def before_step(self):
        """Called before each training step: test-only fault injection."""
        self._steps += 1
        if self._fault is None:
            return
        kind, rank, step = self._fault
        if rank == self.rank and step == self._steps:
            print(f"{FAULT_VARIABLE}: rank {rank} {'dies' if kind == 'kill' else 'hangs'} "
                  f"before step {step}", file=sys.stderr, flush=True)
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)     # hangs, within bounds
            os._exit(3)

    # -- synchronised batch norm ---------------------------------------------
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum, eps,
                          ops=None, threads=None):
        """Training-mode batch norm of this rank's slice with the statistics of
        the whole batch: per channel, sum x and sum x^2 (float64) summed over the
        ranks (one Allreduce); the backend's kernel then normalises with them, as
        it does with running statistics at inference. Returns (out, cache)."""
        ops = ops or _default_ops()
        N, C, H, W = x.shape
        stats = np.empty(2 * C + 1)
        stats[:C] = x.sum(axis=(0, 2, 3), dtype=np.float64)
        stats[C:2 * C] = np.einsum("nchw,nchw->c", x, x, dtype=np.float64)
        stats[2 * C] = N * H * W
        self.sum_(stats, "the batch-norm statistics")
        m = stats[2 * C]
        mean = stats[:C] / m
        var = np.maximum(stats[C:2 * C] / m - mean * mean, 0.0)
        for running, stat in ((running_mean, mean),
                              (running_var, var * (m / (m - 1)) if m > 1 else var)):
            running[...] = (1.0 - momentum) * running.astype(np.float64) + momentum * stat
        out, cache = ops.batchnorm2d_forward(x, gamma, beta, mean.astype(x.dtype),
                                             var.astype(x.dtype), training=False, eps=eps,
                                             threads=threads)
        return out, (cache, m)

    def batchnorm_backward(self, dout, cache, ops=None, threads=None):
        """(dx, dgamma, dbeta) of this rank's slice. The kernel's inference-mode
        backward gives gamma * inv_std * dout and this slice's sum dout, sum dout *
        xhat; those sums over every rank (one Allreduce) give dx the training-mode
        terms. dgamma, dbeta stay this rank's own: the gradient Allreduce adds them."""
        ops = ops or _default_ops()
        (kernel_cache, m), C = cache, dout.shape[1]
        x, gamma, mean, inv_std = kernel_cache[:4]
        dx, dgamma, dbeta = ops.batchnorm2d_backward(dout, kernel_cache, threads=threads)
        total = np.concatenate([dbeta, dgamma]).astype(np.float64)
        self.sum_(total, "the batch-norm gradients")
        # dx -= gamma * inv_std / m * (sum dout + xhat * sum dout * xhat)
        scale = gamma.astype(np.float64) * inv_std / m
        shift, slope = scale * total[:C], scale * inv_std * total[C:]
        correction = x - mean.astype(x.dtype)[:, None, None]
        correction *= slope.astype(x.dtype)[:, None, None]
        correction += shift.astype(x.dtype)[:, None, None]
        dx -= correction
        return dx, dgamma, dbeta


def _default_ops():
    from cnn.backends import get_backend
    return get_backend()


class GradientReducer:
    """Sums a model's gradients over the ranks with one Allreduce per step.

    The gradients are packed into one contiguous float32 buffer (a few trailing
    slots carry the step's metrics, so they cost no extra call); after the sum
    each layer's gradient is a view of the buffer."""

    def __init__(self, comm, model, extras=2):
        self.comm = comm
        self.params = model.parameters()
        sizes = [param.size for _, param, _, _ in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.extras = extras
        self.buffer = np.empty(int(self.offsets[-1]) + extras, np.float32)

    def reduce(self, extras, what="the gradient allreduce"):
        """Sum the gradients and ``extras`` (floats) over the ranks; return the
        summed extras."""
        buf, off = self.buffer, self.offsets
        for i, (_, _, grads, name) in enumerate(self.params):
            buf[off[i]:off[i + 1]] = grads[name].reshape(-1)
        buf[off[-1]:] = extras
        self.comm.sum_(buf, what)
        for i, (_, param, grads, name) in enumerate(self.params):
            grads[name] = buf[off[i]:off[i + 1]].reshape(param.shape)
        return buf[off[-1]:].astype(np.float64)

    def broadcast_parameters(self):
        """Every rank takes rank 0's parameters (the run starts from one model,
        whatever each rank's initialisation or rounding did)."""
        buf, off = self.buffer[:self.offsets[-1]], self.offsets
        for i, (_, param, _, _) in enumerate(self.params):
            buf[off[i]:off[i + 1]] = param.reshape(-1)
        self.comm.broadcast_(buf, "the parameter broadcast")
        for i, (_, param, _, _) in enumerate(self.params):
            param[...] = buf[off[i]:off[i + 1]].reshape(param.shape)


class SlicedRandom:
    """A layer's random draws for this rank's slice of the global batch: draws
    for the whole batch, returns the slice, so dropout masks and the model's
    RNG state are those of one process on the whole batch."""

    def __init__(self, rng):
        self.rng = rng
        self.batch, self.lo, self.hi = 0, 0, 0

    def random(self, shape, dtype=np.float64):
        full = self.rng.random((self.batch,) + tuple(shape[1:]), dtype=dtype)
        return full[self.lo:self.hi]


@contextlib.contextmanager
def quiet_unless_rank0(comm):
    """Ranks other than 0 print nothing on stdout (progress, notes, results)."""
    if comm is None or comm.rank == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
