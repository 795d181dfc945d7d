"""How many threads the Cython kernels use.

Every kernel takes ``threads=None``; None means the process-wide default, which
is ``CNN_NUM_THREADS`` from the environment, else the cores this process may run
on (its CPU affinity, capped by a container's CPU quota). ``set_num_threads``
changes the default at run time.

``threads_for`` is the one policy for how many of those threads a piece of work
gets (each kind of kernel's minimum work per thread is a constant below);
``split_threads`` and ``forward_split`` apply it to the convolution kernels'
loops over images and filter blocks.
"""
import functools
import math
import os

_default = None


def _cgroup_cpu_limit(root):
    """The CPU quota (in cores, may be fractional) of this cgroup, or None."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cores(cgroup_root="/sys/fs/cgroup"):
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota
    (``docker run --cpus``, Kubernetes CPU limits), rounded up, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


@functools.lru_cache(maxsize=None)
def _cores():
    # Asked once: every kernel call resolves its thread count, and the system
    # calls cost microseconds.
    return available_cores()


def _parse(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def get_num_threads():
    """The default thread count for kernels called with ``threads=None``."""
    if _default is not None:
        return _default
    env = os.environ.get("CNN_NUM_THREADS")
    if env:
        return _parse(env, "CNN_NUM_THREADS")
    return _cores()


def set_num_threads(n):
    """Set the default thread count; ``None`` goes back to the environment/cores."""
    global _default
    _default = None if n is None else _parse(n, "threads")


def resolve_threads(threads):
    """The thread count a kernel should use for its ``threads`` argument."""
    if threads is None:
        return get_num_threads()
    return _parse(threads, "threads")


# How much work a thread must get before a second one is worth waking, one
# constant per kind of kernel. Waking a sleeping thread costs tens of
# microseconds (OMP_WAIT_POLICY=PASSIVE, see cnn/__init__.py), and on a busy
# machine a parallel region can wait a whole scheduler tick for it. On the
# 2-core VMs a 2-thread ReLU of 131,072 values took 120-170 us against 38-42 us
# on one thread (the wake alone ~100 us); with spinning threads
# (OMP_WAIT_POLICY=ACTIVE, which a user sets for a machine of its own) it took
# 21-28 us against 27-42.

# True when the user asked for spinning threads (cnn's default is PASSIVE).
SPINNING = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE"

# Elements of memory-bound work (batchnorm, softmax).
MIN_WORK_PER_THREAD = 32768

# Multiply-adds of GEMM (dense, and the filter blocks of a convolution's forward
# pass): ~100 us of single-threaded SGEMM. One image through convnet took 0.40 ms
# with its conv2 and dense1 split over 2 threads, 0.26 ms on one. With spinning
# threads a sixteenth of that pays: convnet's inference plan at batch 1 went
# from 310 to 233 us (medians) with conv2 split (Intel Xeon, 2 threads).
GEMM_WORK_PER_THREAD = 1 << 18 if SPINNING else 1 << 22
# Elements of ReLU (forward or backward): a pass over memory with one compare each.
RELU_WORK_PER_THREAD = 65536
# Elements of pooling input: a few compares or adds each, planes split between threads.
POOL_WORK_PER_THREAD = 16384


def threads_for(threads, work, min_work=MIN_WORK_PER_THREAD):
    """The thread policy: threads worth using for ``work`` units of work.

    At most ``threads`` (None: the default, see ``resolve_threads``), at most one
    per ``min_work`` units, at least one.
    """
    cap = work // min_work
    if cap <= 1 and threads is None:
        return 1    # one thread whatever the default: skip looking the default up
    return max(1, min(resolve_threads(threads), cap))


def split_threads(threads, items):
    """(loop_threads, gemm_threads) for a loop over ``items`` independent pieces:
    a thread per piece, and the threads left over given to each piece's BLAS call."""
    total = resolve_threads(threads)
    loop = threads_for(total, items, min_work=1)
    return loop, max(1, total // loop)


def forward_split(threads, images, filters, work_per_filter):
    """(filter_blocks, loop_threads) for a convolution forward pass.

    The work items are (image, block of filters) pairs, each a single-threaded
    GEMM. With at least as many images as threads a block is every filter;
    with fewer (a batch of one at inference) each image's filters are cut into
    blocks so that every thread still gets a GEMM of its own, and OpenBLAS's
    thread pool is never needed. Blocks are not cut thinner than the work is
    worth: each gets at least GEMM_WORK_PER_THREAD multiply-adds.
    """
    total = resolve_threads(threads)
    blocks = 1
    if images < total:
        worth = threads_for(total, filters * work_per_filter, GEMM_WORK_PER_THREAD)
        blocks = max(1, min(-(-total // images), filters, worth))
    return blocks, max(1, min(total, images * blocks))
