"""Load benchmark of the HTTP service under real gunicorn (a benchmark, not a test).

    python -m cnn.bench.serve [--model PATH] [--requests 200] [--seconds 20]
                              [--batches 1,64] [--concurrency 1,8] [--workers N]
                              [--format png|npy|png,npy] [--json]

(``python benchmarks/serve.py`` in a checkout runs the same.) Starts gunicorn
with the settings the package ships (what ``cnn serve`` runs; see
cnn.bench.server) on 127.0.0.1 (a free port; nothing leaves the machine)
serving one model: ``--model``, else ``models/convnet.npz`` of the current
folder when present, else a quick one trained into a temporary folder (1 epoch
on 5,000 images, ~10 s). Then, for every input format, batch
size and concurrency, client threads with one keep-alive ``http.client``
connection each POST the same batch of real Fashion-MNIST test images to
``/predict`` until ``--requests`` requests are done or ``--seconds`` have passed
(after a few warm-up requests), and it prints one table row per run:
requests/s, images/s, p50/p99 latency and the count of non-2xx answers (must
be 0). The answers of the first request of every format and batch size are
checked against ``model.predict``.

Formats (``--format``, comma-separated to run several; default png):

* ``png``: a multipart/form-data body of one PNG file per image (what a browser
  or ``curl -F`` sends); the server decodes every PNG.
* ``npy``: one ``application/x-npy`` body, the uint8 (N, 28, 28) batch written
  by ``np.save`` (what a program sends); nothing to decode.

The client is kept cheap because it shares the cores with the server: every
request body is built once before the runs, the threads only send it and read
the answer (the answer is parsed only for the first, checked request), and no
per-request work is done beyond timing. On a 2-core machine, note that every
client thread competes with the two workers for CPU (little: the client
costs a few us per image, the server hundreds). gunicorn keeps each kept-alive
connection on the worker that accepted it, so the benchmark waits until every
worker has loaded the model, and re-opens the connections when the warm-up
requests show that some worker got none (with 2 threads and 2 workers, half
the time); the "per worker" column shows how the timed requests were shared.
The "req/pass" column is the requests merged into each forward pass during the
run (service.batching's ``cnn_batch_requests`` from ``/metrics``, all workers):
1.00 with ``CNN_BATCHING=0``; the server takes the CNN_* settings of the
environment, so ``CNN_BATCHING=0 python -m cnn.bench.serve ...`` measures it off.

For comparison it prints the in-process ``model.predict`` images/s on the same
batch (no HTTP, no decoding), once with one kernel thread (what one worker gets
on 2 cores) and once with all cores. The server is stopped at the end, also on
errors and Ctrl-C. Run it on a quiet machine: client and server share the cores.

``--json`` makes the LAST line of stdout one JSON object (also after an error,
then with "error" set) for programs (``python -m cnn.bench`` runs
``cnn.bench.serve --batches 64 --concurrency 8 --workers 2 --json``)::

    {"http_images_per_s": best images/s of the batch-64 rows (else the largest batch),
     "inprocess_images_per_s": in-process model.predict images/s at that batch with
                               all cores (the table's figure),
     "inprocess_images_per_s_1thread": the same with one kernel thread,
     "ratio": http / inprocess, "batch": 64, "format": format of the best row,
     "formats": [...], "workers": gunicorn workers, "kernel_threads": per worker,
     "concurrency": [...], "cores": ..., "non_2xx": failed requests in all runs,
     "rows": [{"format", "batch", "concurrency", "requests", "requests_per_s",
               "images_per_s", "p50_ms", "p99_ms", "non_2xx",
               "requests_per_worker": [timed requests of each worker, most first],
               "requests_per_pass": requests merged per forward pass, or null}, ...],
     "error": null or the reason the benchmark failed}
"""
import argparse
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

import cnn
from cnn._cli import positive_float, positive_int
from cnn._threads import available_cores
from cnn.bench import server as gunicorn_server
from cnn.bench.report import cpu_model
from cnn.data import DataError, load_dataset


def machine_line():
    cpu = cpu_model()
    cores = available_cores()
    try:
        import gunicorn
        gver = gunicorn.__version__
    except ImportError:
        gver = "missing"
    return (f"machine: {cpu}, {cores} cores (os.cpu_count {os.cpu_count()}); python "
            f"{platform.python_version()}; numpy {np.__version__}; gunicorn {gver}")


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


FORMATS = ("png", "npy")


def format_list(text):
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in FORMATS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected png, npy or png,npy, got {text!r}")
    return list(dict.fromkeys(values))


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cnn.bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="weights file to serve (default: ./models/convnet.npz, "
                                   "else a quickly trained one)")
    p.add_argument("--requests", type=positive_int, default=200,
                   help="requests per run, at most (default 200)")
    p.add_argument("--seconds", type=positive_float, default=20.0,
                   help="time limit per run in seconds (default 20)")
    p.add_argument("--warmup", type=int, default=4, help="warm-up requests per run (4)")
    p.add_argument("--batches", type=int_list, default=[1, 64],
                   help="images per request, comma-separated (default 1,64)")
    p.add_argument("--concurrency", type=int_list, default=[1, 8],
                   help="client threads, comma-separated (default 1,8)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="gunicorn workers (default: the settings file's, CNN_WORKERS)")
    p.add_argument("--ready-timeout", type=positive_float, default=60.0,
                   help="seconds to wait for /ready (default 60)")
    p.add_argument("--format", type=format_list, default=["png"], dest="formats",
                   help="request body: png (multipart PNG files), npy (one "
                        "application/x-npy array) or both, comma-separated (default png)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with the results as the last stdout line")
    return p


# ----------------------------------------------------------------- inputs


def test_images(n):
    """(n, 28, 28) uint8 test images: Fashion-MNIST if installed, else random."""
    try:
        images = load_dataset().test_images
        return np.resize(images, (n,) + images.shape[1:]) if n > len(images) else images[:n]
    except DataError:
        print("  (Fashion-MNIST not installed: random images)")
        return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def png_bytes(pixels):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def npy_body(pixels):
    """(body, Content-Type) of one application/x-npy request: np.save of the batch."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(pixels, dtype=np.uint8), allow_pickle=False)
    return buf.getvalue(), "application/x-npy"


def request_body(fmt, images, pngs):
    return multipart_body(pngs) if fmt == "png" else npy_body(images)


def multipart_body(pngs):
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n".encode() + png + b"\r\n"
             for i, png in enumerate(pngs)]
    return (b"".join(parts) + f"--{boundary}--\r\n".encode(),
            f"multipart/form-data; boundary={boundary}")


# ------------------------------------------------------------------ model


def find_or_train_model(arg, tmp):
    if arg:
        path = Path(arg)
        if not path.is_file():
            sys.exit(f"cnn.bench.serve: --model {arg!r}: no such file")
        return path, "given"
    default = Path("models") / "convnet.npz"    # what `cnn serve` serves by default
    if default.is_file():
        return default.resolve(), "models/convnet.npz"
    out = Path(tmp) / "trained" / "convnet.npz"
    print("  no models/convnet.npz: training a quick one (1 epoch, 5,000 images)...",
          flush=True)
    r = subprocess.run([sys.executable, "-m", "cnn.train", "--limit", "5000", "--epochs", "1",
                        "--out", str(out), "--progress", "lines"], cwd=tmp,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"cnn.bench.serve: training failed:\n{r.stdout}{r.stderr}")
    return out, "quick 1-epoch model"


# ----------------------------------------------------------------- server


class Server:
    """gunicorn in its own session (Ctrl-C reaches us, and we stop it gracefully)."""

    def __init__(self, model_dir, port, workers, log_dir):
        # The caller's CNN_* settings apply (CNN_BATCHING=0, ...), but not a
        # default model: the benchmark serves the one model it was given.
        env = gunicorn_server.gunicorn_env(port, model_dir, workers,
                                           drop=("CNN_DEFAULT_MODEL",))
        self.port = port
        self.stdout = Path(log_dir) / "gunicorn.out.log"
        self.stderr = Path(log_dir) / "gunicorn.err.log"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = gunicorn_server.start(env, stdout=out, stderr=err)

    def log(self):
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def access_log_size(self):
        return self.stdout.stat().st_size if self.stdout.exists() else 0

    def predict_pids(self, since):
        """{worker pid: /predict requests} in the access log after byte ``since``."""
        with open(self.stdout, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        counts = {}
        for pid in re.findall(r'"POST /predict[^"]*" .* <(\d+)>$', text, re.M):
            counts[pid] = counts.get(pid, 0) + 1
        return counts

    def wait_ready(self, timeout):
        """/ready's answer once EVERY worker has loaded the model.

        One worker answering /ready is not enough: connections opened while
        the other workers are still importing would all be accepted by the
        first one and, kept alive, stay there for the whole run."""
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            if body is None:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                    conn.request("GET", "/ready")
                    resp = conn.getresponse()
                    answer = json.loads(resp.read())
                    conn.close()
                    if resp.status == 200:
                        body = answer
                except OSError:
                    pass
            if body is not None:
                log = self.log()
                workers = server_threads(log)[0]
                if workers is not None and log.count("loaded model ") >= workers:
                    time.sleep(0.3)  # (from loading to the accept loop)
                    return body
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready within {timeout:g}s:\n{self.log()}")

    def stop(self, timeout=30):
        return gunicorn_server.stop(self.proc, timeout)


# ------------------------------------------------------------------- load


# Set on Ctrl-C/SIGTERM: client threads stop sending before gunicorn is stopped.
STOP = threading.Event()


def batch_counts(port):
    """(forward passes, requests in them) so far, from /metrics (all models and
    workers), or None when the server does not report them."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode(errors="replace")
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    found = {kind: [float(v) for v in re.findall(
        rf"^cnn_batch_requests_{kind}{{[^}}]*}} (\S+)$", text, re.M)]
        for kind in ("count", "sum")}
    return (sum(found["count"]), sum(found["sum"])) if found["count"] else None


def post(conn, body, headers):
    """POST a prebuilt body; ``headers`` (a dict) is prebuilt too (see request_headers)."""
    conn.request("POST", "/predict", body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def request_headers(body, ctype):
    return {"Content-Type": ctype, "Content-Length": str(len(body))}


def run_load(port, body, headers, concurrency, n_requests, seconds, warmup, server=None,
             workers=None, attempts=10):
    """Latencies (s) of the timed requests, failures, the wall time and the
    /predict requests per worker pid (from the access log; None without ``server``).

    Every client thread keeps one connection, and gunicorn keeps a kept-alive
    connection on the worker that accepted it, so the threads' connections can
    all end up on one worker (then the others idle for the whole run). After
    the warm-up requests the access log tells which workers answered: when
    fewer than min(workers, concurrency) did, every client reconnects and
    warms up again (up to ``attempts`` times) before the timed requests start.
    """
    lock = threading.Lock()
    state = {"issued": 0, "started": None, "deadline": None, "go": False}
    latencies, failures, errors = [], [], []
    want = min(workers or 1, concurrency)
    log_start = server.access_log_size() if server is not None else 0

    warmed = threading.Barrier(concurrency + 1)
    released = threading.Barrier(concurrency + 1)

    def connect():
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def take():
        with lock:
            if (STOP.is_set() or state["issued"] >= n_requests
                    or time.perf_counter() > state["deadline"]):
                return False
            state["issued"] += 1
            return True

    def client():
        conn = connect()
        try:
            while True:
                for _ in range(warmup):  # connection set-up, caches, worker warm-up
                    post(conn, body, headers)
                warmed.wait()
                released.wait()
                if state["go"]:
                    break
                conn.close()  # on the same worker as the others: try a new connection
                conn = connect()
            while take():
                t = time.perf_counter()
                try:
                    status, data = post(conn, body, headers)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # reconnect once the server closed (max_requests, ...)
                    conn = connect()
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if not 200 <= status < 300:
                        failures.append(f"{status}: {data[:200]!r}")
        except Exception as exc:  # noqa: BLE001 - reported, never hangs the barriers
            errors.append(exc)
            warmed.abort()
            released.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        for attempt in range(attempts):
            warmed.wait(timeout=seconds + 120)
            balanced = True
            if server is not None:
                time.sleep(0.05)  # (gunicorn logs a request just after answering it)
                if want > 1 and warmup > 0 and attempt + 1 < attempts:
                    balanced = len(server.predict_pids(log_start)) >= want
                log_start = server.access_log_size()
            state["go"] = balanced
            if balanced:
                state["started"] = time.perf_counter()
                state["deadline"] = state["started"] + seconds
            released.wait(timeout=seconds + 120)
            if balanced:
                break
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join(timeout=seconds + 120)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads) or state["started"] is None:
        raise RuntimeError("client threads did not finish in time")
    wall = time.perf_counter() - state["started"]
    split = None
    if server is not None:
        time.sleep(0.05)
        split = server.predict_pids(log_start)
    return np.array(latencies), failures, wall, split


def in_process_rate(model, images, threads, min_time=1.0):
    """Images/s of model.predict on ``images`` (median of repeated calls)."""
    cnn.set_num_threads(threads)
    try:
        model.predict(images)
        times, start = [], time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 500):
            t = time.perf_counter()
            model.predict(images)
            times.append(time.perf_counter() - t)
        return len(images) / float(np.median(times))
    finally:
        cnn.set_num_threads(None)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def server_threads(log):
    """(workers, kernel threads per worker) from the workers' start-up lines, or Nones."""
    m = re.search(r"worker \d+: (\d+) kernel threads \((\d+) workers", log)
    return (int(m.group(2)), int(m.group(1))) if m else (None, None)


def summary(rows, inprocess, args, workers, kernel_threads, error=None):
    """The --json object (see the module docstring)."""
    batch = 64 if 64 in args.batches else max(args.batches)
    best = max((r for r in rows if r["batch"] == batch), default=None,
               key=lambda r: r["images_per_s"])
    http = best["images_per_s"] if best else None
    one, full = inprocess.get(batch, (None, None))
    return {
        "http_images_per_s": http,
        "inprocess_images_per_s": full,
        "inprocess_images_per_s_1thread": one,
        "ratio": round(http / full, 4) if http and full else None,
        "batch": batch,
        "format": best["format"] if best else None,
        "formats": args.formats,
        "workers": workers,
        "kernel_threads": kernel_threads,
        "concurrency": args.concurrency,
        "cores": available_cores(),
        "non_2xx": sum(r["non_2xx"] for r in rows),
        "rows": rows,
        "error": error,
    }


def main(argv=None):
    args = build_parser().parse_args(argv)
    print(machine_line())
    tmp = tempfile.mkdtemp(prefix="cnn-bench-serve-")
    server = None
    rows, inprocess, workers, kernel_threads, error, code = [], {}, args.workers, None, None, 1
    # Ctrl-C and SIGTERM (e.g. `timeout`) unwind to the finally below, which stops
    # gunicorn. SIGINT explicitly too: a shell starting us in the background sets
    # it to "ignore", and Python then keeps that.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        model_path, origin = find_or_train_model(args.model, tmp)
        model_dir = Path(tmp) / "models"
        model_dir.mkdir()
        shutil.copy(model_path, model_dir / model_path.name)
        model = cnn.load_model(str(model_path))
        print(f"model: {model_path} ({origin}; {model.name}, {model.num_params():,} "
              f"parameters)")

        images = test_images(max(args.batches))
        pngs = [png_bytes(img) for img in images] if "png" in args.formats else []
        # Every request body is built here, once: the client threads only send them.
        bodies = {}
        for fmt in args.formats:
            for batch in args.batches:
                body, ctype = request_body(fmt, images[:batch], pngs[:batch])
                bodies[fmt, batch] = body, request_headers(body, ctype)
        port = gunicorn_server.free_port()
        server = Server(model_dir, port, args.workers, tmp)
        ready = server.wait_ready(args.ready_timeout)
        log = server.log()
        workers, kernel_threads = server_threads(log)
        workers_line = [line for line in log.splitlines() if "kernel threads" in line]
        detail = workers_line[0].split("] ", 1)[-1] if workers_line else ""
        print(f"server: gunicorn on 127.0.0.1:{port}, model {ready['default']!r}; {detail}")
        print(f"runs: at most {args.requests} requests or {args.seconds:g} s each, after "
              f"{args.warmup} warm-up requests per client; formats {', '.join(args.formats)} "
              f"(png: multipart PNG files, npy: one application/x-npy array) to /predict")
        print()

        header = (f"{'format':>6} {'batch':>5} {'conc':>4} {'requests':>8} {'req/s':>8} "
                  f"{'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7} {'req/pass':>8}  "
                  "per worker")
        print(header, flush=True)
        for fmt in args.formats:
            for batch in args.batches:
                body, headers = bodies[fmt, batch]
                # Check the answers once per format and batch size against the library.
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, data = post(conn, body, headers)
                conn.close()
                if status != 200:
                    raise RuntimeError(f"POST /predict ({fmt}, batch {batch}) -> {status}: "
                                       f"{data[:300]!r}")
                got = [p["label"] for p in json.loads(data)["predictions"]]
                want = model.predict(images[:batch]).tolist()
                if got != want:
                    raise RuntimeError(f"{fmt} batch {batch}: service labels {got} != "
                                       f"model.predict {want}")
                for conc in args.concurrency:
                    before = batch_counts(port)
                    lat, failures, wall, split = run_load(
                        port, body, headers, conc, args.requests, args.seconds, args.warmup,
                        server=server, workers=workers)
                    after = batch_counts(port)   # (the run's warm-up requests included)
                    per_pass = (round((after[1] - before[1]) / (after[0] - before[0]), 2)
                                if before and after and after[0] > before[0] else None)
                    per_worker = sorted(split.values(), reverse=True) if split else []
                    n = len(lat)
                    rps = n / wall if wall > 0 else float("nan")
                    p50, p99 = (np.percentile(lat, [50, 99]) * 1e3) if n else (np.nan,
                                                                                 np.nan)
                    rows.append({"format": fmt, "batch": batch, "concurrency": conc,
                                 "requests": n, "requests_per_s": round(rps, 2),
                                 "images_per_s": round(rps * batch, 1),
                                 "p50_ms": round(float(p50), 3),
                                 "p99_ms": round(float(p99), 3), "non_2xx": len(failures),
                                 "requests_per_worker": per_worker,
                                 "requests_per_pass": per_pass})
                    print(f"{fmt:>6} {batch:>5} {conc:>4} {n:>8} {rps:>8.1f} "
                          f"{rps * batch:>9.0f} {p50:>8.1f} {p99:>8.1f} {len(failures):>7} "
                          f"{per_pass if per_pass is not None else 'n/a':>8}  "
                          f"{'/'.join(map(str, per_worker))}", flush=True)
                    for f in failures[:3]:
                        print(f"      failure: {f}")

        print()
        cores = available_cores()
        print("in-process model.predict (no HTTP, no decoding), same batches:")
        for batch in args.batches:
            x = images[:batch]
            one = in_process_rate(model, x, 1)
            full = in_process_rate(model, x, cores) if cores > 1 else one
            inprocess[batch] = (round(one, 1), round(full, 1))
            line = f"  batch {batch:>3}: {one:>8.0f} images/s with 1 thread"
            if cores > 1:
                line += f", {full:>8.0f} with {cores} threads"
            print(line)
        best = summary(rows, inprocess, args, workers, kernel_threads)
        if best["ratio"] is not None:
            print(f"HTTP / in-process at batch {best['batch']}: {best['ratio']:.0%} "
                  f"({best['format']}, {best['http_images_per_s']:.0f} vs "
                  f"{best['inprocess_images_per_s']:.0f} images/s)")
        rc = server.stop()
        err = server.log()
        print(f"\ngunicorn stopped: exit {rc}" + ("; TRACEBACK in its log (on stderr)"
                                                  if "Traceback" in err else ""))
        if "Traceback" in err:
            print(err[err.index("Traceback") - 300:][-4000:], file=sys.stderr)
        server = None
        total_failures = sum(r["non_2xx"] for r in rows)
        if total_failures:
            print(f"FAILED: {total_failures} non-2xx or failed requests")
            error = f"{total_failures} non-2xx or failed requests"
            code = 1
        elif rc != 0:
            error = f"gunicorn exited with {rc}"
            code = 1
        else:
            code = 0
        return code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        error, code = "interrupted", 130
        return code
    except RuntimeError as exc:
        print(f"cnn.bench.serve: error: {exc}", file=sys.stderr)
        error, code = str(exc), 1
        return code
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        STOP.set()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.json:  # the contract: the last stdout line is this object
            print(json.dumps(summary(rows, inprocess, args, workers, kernel_threads,
                                     error)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
