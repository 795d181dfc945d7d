"""Gunicorn settings for the cnn prediction service.

    cnn serve [--bind HOST:PORT] [--workers N] [--models DIR]   # runs this file
    gunicorn -c gunicorn.conf.py 'service:create_app()'         # checkout: the root shim runs it

This file is package data of ``service`` (not a module: it is run by path), so
an installed wheel carries it and ``cnn serve`` needs no checkout.

Environment knobs (all optional):

    CNN_BIND       address to listen on                  (default 127.0.0.1:8000)
    CNN_WORKERS    worker processes                      (default min(cores, 4))
    CNN_THREADS    kernel (OpenMP) threads per worker     (default cores // workers, >= 1)
    CNN_KEEPALIVE  seconds to send a request's headers    (default 5)
    CNN_WORKER_CONNECTIONS  open connections per worker  (default 1000)
    GUNICORN_CMD_ARGS  any other gunicorn flag, e.g. "--timeout 120 --backlog 512"

This file is run by the gunicorn master before any worker exists. It must stay
free of NumPy/cnn imports: the master is what every worker is forked from
(including the replacements that max_requests and crashes cause), so it must
never start an OpenMP or OpenBLAS thread pool (see preload_app below).
"""
import math
import os


def _cgroup_cpu_quota(root="/sys/fs/cgroup"):
    """The cgroup CPU quota in cores (docker --cpus, Kubernetes limits), or None."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _cores():
    """Cores this process may use: CPU affinity (taskset/cpuset) capped by a
    cgroup CPU quota, rounded up. The same rule as cnn._threads'
    available_cores(), repeated here because importing the service would
    load NumPy into the master."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _positive_int_env(name, default):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        raise SystemExit(
            f"gunicorn.conf.py: {name} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise SystemExit(f"gunicorn.conf.py: {name} must be a positive integer, got {value!r}")
    return n


CORES = _cores()

# --------------------------------------------------------------------- socket

# Where to listen: loopback by default, so a bare `gunicorn ...` on a laptop or
# server is not reachable from the network until you say so. The Dockerfile
# and docker-compose.yml set CNN_BIND=0.0.0.0:8000 explicitly (a container's
# port is only reachable once published). To restrict callers on a public
# bind, set CNN_API_TOKEN (service.auth) and/or put the nginx of
# docker-compose.yml in front.
bind = os.environ.get("CNN_BIND", "127.0.0.1:8000")

# ------------------------------------------------------------------- workers

# Worker processes. Request handling (HTTP parsing, PNG decoding, JSON) is
# Python that holds the GIL, so small requests only run in parallel across
# processes: up to one worker per core helps throughput. Past ~4 workers the
# extra processes mostly cost memory (each one loads every model) and OpenMP
# pools, while the cores left over are better spent as kernel threads inside
# each worker (CNN_THREADS below) so large batches finish sooner. On the
# 2-core reference machine this gives 2 workers x 1 kernel thread.
workers = _positive_int_env("CNN_WORKERS", max(1, min(CORES, 4)))

# gevent: every connection of a worker is a greenlet, so a client that sends
# its request slowly, or opens a connection and sends nothing, costs a few KiB
# of memory, not a worker or a thread. With the threaded worker (gthread, 4
# threads) 10 connections trickling one header line every 2 s took the
# service offline: 0 of the /health and /predict probes answered within 5 s
# (benchmarks/slow_clients.py). The CPU work of a request (decoding images,
# parsing JSON, the forward pass) runs in one real thread per worker
# (service.offload), not on the event loop, which keeps reading requests and
# writing answers; one forward pass runs at a time per worker (service.models
# holds a lock per worker), so the kernel-thread budget below is not
# multiplied by the connections, and the bodies a worker holds at once are
# capped by CNN_WORKER_BODY_BYTES (service.body). gunicorn monkey-patches the worker
# before it imports the app (preload_app = False below), so the app's sockets
# and locks are gevent's.
worker_class = "gevent"

# Open connections per worker; past it, new ones wait in the listen backlog.
worker_connections = _positive_int_env("CNN_WORKER_CONNECTIONS", 1000)

# ------------------------------------------------------------------ timeouts

# A worker whose main loop has not checked in for this many seconds is killed
# and replaced. The heartbeat comes from a greenlet of the event loop, which
# keeps running while a forward pass is in its thread (service.offload), so
# this bounds hangs (a stuck worker), not slow predictions or slow clients;
# 60 s leaves room for a cold model load on a slow disk.
timeout = 60

# On SIGTERM (docker stop, Ctrl-C, a max_requests restart) workers stop
# accepting and get this long to finish requests in flight before being
# killed. Keep it below the orchestrator's grace period (compose sets
# stop_grace_period: 30s on the api service; Docker's default is only 10 s).
graceful_timeout = 20

# Seconds a client has to send a request's headers, counted from the
# connection's start or the end of the previous answer on a kept-alive
# connection: the gevent worker reads each request line and header block under
# a timer of this length, then closes the connection. So an idle connection,
# or one trickling its headers, is dropped after 5 s. The body then has
# CNN_BODY_TIMEOUT seconds (service.body, default 20), and an answer to a
# client that does not read it is bounded by the same socket timeout. Clients
# that batch many requests reuse connections within the 5 s; a load balancer
# in front should use a shorter idle timeout than this.
keepalive = _positive_int_env("CNN_KEEPALIVE", 5)

# -------------------------------------------------------- worker recycling

# Restart each worker after this many requests (plus a random 0..jitter so
# workers do not all restart at once). Batches of varying size leave NumPy
# buffers and allocator fragmentation behind; a periodic fresh process keeps
# resident memory bounded. A restart costs one model load (milliseconds for
# these small networks) and is graceful: the old worker finishes its requests.
# At batch 64 a worker answers ~60 requests a second, so 2,000 restarted each
# one every ~30 s, and clients reconnecting during the restart piled onto the
# surviving worker (-10% throughput in a 5,000-request benchmark).
max_requests = 20000
max_requests_jitter = 2000

# --------------------------------------------------------------------- app

# False: every worker imports the service and loads the models itself, after
# the fork. Preloading would load NumPy/SciPy (OpenBLAS) and the OpenMP
# kernels in the master; a thread pool that exists before fork() is not
# copied into the child (only the forking thread is), and libgomp/OpenBLAS
# state left locked by those threads makes the first parallel region in a
# forked worker hang. Loading after the fork costs a little memory sharing and
# start-up time, and also means max_requests replacements start clean.
preload_app = False

# The heartbeat file is fchmod'ed every second; on a container's overlay
# filesystem that can block the worker. /dev/shm is memory-backed.
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    worker_tmp_dir = "/dev/shm"

# gunicorn >= 25 opens a control socket for `gunicornc` at
# $HOME/.gunicorn/gunicorn.ctl by default. One fixed path per user means two
# servers of the same user (a test next to a dev server, a benchmark) fight
# over it, and a read-only or missing home in a container makes it warn. The
# service is managed with signals (TERM, HUP, TTIN/TTOU) instead.
control_socket_disable = True

# ------------------------------------------------------------------ logging

# Access log to stdout and error log to stderr: containers collect both, and
# nothing is written inside the (read-only friendly) image. The format is the
# combined log format plus the request time in seconds with microsecond
# resolution (%(L)s; %(M)s would round most predictions to 0 ms) and the
# worker's pid (%(p)s, printed as <pid>), e.g.
#   127.0.0.1 - - [22/Nov/2026:16:33:23 +0000] "POST /predict HTTP/1.1" 200 912 "-"
#     "curl/8.5" 0.004127s <30442>
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("CNN_LOG_LEVEL", "info")
access_log_format = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                     '%(L)ss %(p)s')

# Name the processes in ps/top (needs setproctitle; harmless without it).
proc_name = "cnn-service"

# ------------------------------------------------------------ thread budget

# Environment names that size thread pools inside a worker. CNN_THREADS is what
# the service reads at create_app() time; CNN_NUM_THREADS is the kernels' own
# default (cnn._threads) and OMP/OPENBLAS cover pools outside our kernels
# (NumPy's BLAS calls). They are only set when the user has not set them.
_THREAD_VARS = ("CNN_THREADS", "CNN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def kernel_threads(n_workers, cores=CORES):
    """Kernel threads per worker so that workers x threads <= cores (at least 1)."""
    return max(1, cores // max(1, n_workers))


def post_fork(server, worker):
    """In each new worker, before it imports the app: size its thread pools.

    This runs in the child after fork() and before the app is loaded (gunicorn
    calls post_fork, then init_process, which imports service:create_app()),
    so create_app() sees the variables. Using server.num_workers (not the
    `workers` above) respects --workers from GUNICORN_CMD_ARGS and TTIN/TTOU.
    Only this worker's environment changes; the master stays as the user
    started it, so a variable the user set is never overridden.
    """
    n_workers = server.num_workers or workers
    # CNN_THREADS wins for all four if the user set it; else the even split.
    threads_per_worker = os.environ.get("CNN_THREADS") or str(kernel_threads(n_workers))
    for name in _THREAD_VARS:
        os.environ.setdefault(name, threads_per_worker)
    # The service's own default for CNN_THREADS is cores // CNN_WORKERS: keep
    # CNN_WORKERS equal to the real worker count for it.
    os.environ["CNN_WORKERS"] = str(n_workers)
    server.log.info("worker %s: %s kernel threads (%d workers, %d cores)",
                    worker.pid, os.environ["CNN_THREADS"], n_workers, CORES)


# ---------------------------------------------------------------- metrics

# Every worker counts its own requests. A Prometheus scrape reaches one worker
# at random, so per-worker counters would jump between workers' values (and
# look like resets). prometheus_client's multiprocess mode fixes that: with
# PROMETHEUS_MULTIPROC_DIR set before the workers import prometheus_client,
# each worker keeps its values in files in that folder and /metrics (see
# service/metrics.py) adds all workers up. A folder the user names is used
# (its stale *.db files from an earlier run are removed); otherwise a private
# one is made per server and removed on exit. (Its path is remembered in the
# environment, not in a global: a HUP reload re-runs this file.)
_OWNED_METRICS_DIR = "CNN_GUNICORN_METRICS_DIR"


def on_starting(server):
    """In the master, before any worker exists."""
    import glob
    import tempfile
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*.db")):
            os.remove(stale)
    else:
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        folder = tempfile.mkdtemp(prefix="cnn-metrics-", dir=shm)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_OWNED_METRICS_DIR] = folder
    server.log.info("metrics of all workers are kept in %s", folder)


def child_exit(server, worker):
    """In the master, after a worker exited: its live gauges no longer count."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """In the master, at shutdown: remove the metrics folder we made."""
    folder = os.environ.get(_OWNED_METRICS_DIR)
    if folder and folder == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
