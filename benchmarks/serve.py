"""Load benchmark of the HTTP service under real gunicorn (a benchmark, not a test).

    python benchmarks/serve.py [--model PATH] [--requests 200] [--seconds 20]
                               [--batches 1,64] [--concurrency 1,8] [--workers N]

Starts ``gunicorn -c gunicorn.conf.py 'service:create_app()'`` on 127.0.0.1 (a
free port; nothing leaves the machine) serving one model: ``--model``, else
``models/convnet.npz`` when present, else a quick one trained into a temporary
folder (1 epoch on 5,000 images, ~10 s). Then, for every batch size and
concurrency, client threads with one keep-alive ``http.client`` connection each
POST multipart batches of real Fashion-MNIST test PNGs to ``/predict`` until
``--requests`` requests are done or ``--seconds`` have passed (after a few
warm-up requests), and it prints one table row per run: requests/s, images/s,
p50/p99 latency and the count of non-2xx answers (must be 0). The answers of
the first request of every batch size are checked against ``model.predict``.

For comparison it prints the in-process ``model.predict`` images/s on the same
batch (no HTTP, no PNG decoding), once with one kernel thread (what one worker
gets on 2 cores) and once with all cores. The server is stopped at the end,
also on errors and Ctrl-C. Run it on a quiet machine: client and server share
the cores.
"""
import argparse
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cnn  # noqa: E402
from cnn._cli import positive_float, positive_int  # noqa: E402
from cnn.bench import cpu_model  # noqa: E402
from cnn.data import DataError, load_dataset  # noqa: E402


def machine_line():
    cpu = cpu_model()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
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
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser():
    p = argparse.ArgumentParser(prog="python benchmarks/serve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="weights file to serve (default: models/convnet.npz, "
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
                   help="gunicorn workers (default: gunicorn.conf.py's, CNN_WORKERS)")
    p.add_argument("--ready-timeout", type=positive_float, default=60.0,
                   help="seconds to wait for /ready (default 60)")
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
            sys.exit(f"serve.py: --model {arg!r}: no such file")
        return path, "given"
    default = ROOT / "models" / "convnet.npz"
    if default.is_file():
        return default, "models/convnet.npz"
    out = Path(tmp) / "trained" / "convnet.npz"
    print("  no models/convnet.npz: training a quick one (1 epoch, 5,000 images)...",
          flush=True)
    r = subprocess.run([sys.executable, "-m", "cnn.train", "--limit", "5000", "--epochs", "1",
                        "--out", str(out), "--progress", "lines"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if r.returncode != 0:
        sys.exit(f"serve.py: training failed:\n{r.stdout}{r.stderr}")
    return out, "quick 1-epoch model"


# ----------------------------------------------------------------- server


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn in its own session (Ctrl-C reaches us, and we stop it gracefully)."""

    def __init__(self, model_dir, port, workers, log_dir):
        env = dict(os.environ, PYTHONPATH=str(ROOT), CNN_BIND=f"127.0.0.1:{port}",
                   CNN_MODEL_DIR=str(model_dir))
        env.pop("CNN_DEFAULT_MODEL", None)
        if workers:
            env["CNN_WORKERS"] = str(workers)
        self.port = port
        self.stdout = Path(log_dir) / "gunicorn.out.log"
        self.stderr = Path(log_dir) / "gunicorn.err.log"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                 "service:create_app()"], cwd=ROOT, env=env, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def log(self):
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ready")
                resp = conn.getresponse()
                body = json.loads(resp.read())
                conn.close()
                if resp.status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready within {timeout:g}s:\n{self.log()}")

    def stop(self, timeout=30):
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)


# ------------------------------------------------------------------- load


# Set on Ctrl-C/SIGTERM: client threads stop sending before gunicorn is stopped.
STOP = threading.Event()


def post(conn, body, ctype):
    conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
    resp = conn.getresponse()
    return resp.status, resp.read()


def run_load(port, body, ctype, concurrency, n_requests, seconds, warmup):
    """Latencies (s) of the timed requests, the non-2xx count and the wall time."""
    lock = threading.Lock()
    state = {"issued": 0, "started": None, "deadline": None}
    latencies, failures, errors = [], [], []

    def open_gate():  # runs once, before any client is released
        state["started"] = time.perf_counter()
        state["deadline"] = state["started"] + seconds

    start_gate = threading.Barrier(concurrency + 1, action=open_gate)

    def take():
        with lock:
            if (STOP.is_set() or state["issued"] >= n_requests
                    or time.perf_counter() > state["deadline"]):
                return False
            state["issued"] += 1
            return True

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(warmup):  # connection set-up, caches, worker warm-up
                post(conn, body, ctype)
            start_gate.wait()
            while take():
                t = time.perf_counter()
                try:
                    status, data = post(conn, body, ctype)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # reconnect once the server closed (max_requests, ...)
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if not 200 <= status < 300:
                        failures.append(f"{status}: {data[:200]!r}")
        except Exception as exc:  # noqa: BLE001 - reported, never hangs the barrier
            errors.append(exc)
            start_gate.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        start_gate.wait(timeout=seconds + 120)
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join(timeout=seconds + 120)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise RuntimeError("client threads did not finish in time")
    wall = time.perf_counter() - state["started"]
    return np.array(latencies), failures, wall


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


def main(argv=None):
    args = build_parser().parse_args(argv)
    print(machine_line())
    tmp = tempfile.mkdtemp(prefix="cnn-bench-serve-")
    server = None
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
        pngs = [png_bytes(img) for img in images]
        port = free_port()
        server = Server(model_dir, port, args.workers, tmp)
        ready = server.wait_ready(args.ready_timeout)
        workers_line = [line for line in server.log().splitlines() if "kernel threads" in line]
        detail = workers_line[0].split("] ", 1)[-1] if workers_line else ""
        print(f"server: gunicorn on 127.0.0.1:{port}, model {ready['default']!r}; {detail}")
        print(f"runs: at most {args.requests} requests or {args.seconds:g} s each, after "
              f"{args.warmup} warm-up requests per client; multipart PNG batches to /predict")
        print()

        header = (f"{'batch':>5} {'conc':>4} {'requests':>8} {'req/s':>8} {'images/s':>9} "
                  f"{'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7}")
        rows, total_failures = [], 0
        for batch in args.batches:
            body, ctype = multipart_body(pngs[:batch])
            # Check the answers once per batch size against the library.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status, data = post(conn, body, ctype)
            conn.close()
            if status != 200:
                raise RuntimeError(f"POST /predict (batch {batch}) -> {status}: {data[:300]!r}")
            got = [p["label"] for p in json.loads(data)["predictions"]]
            want = model.predict(images[:batch]).tolist()
            if got != want:
                raise RuntimeError(f"batch {batch}: service labels {got} != model.predict "
                                   f"{want}")
            for conc in args.concurrency:
                lat, failures, wall = run_load(port, body, ctype, conc, args.requests,
                                               args.seconds, args.warmup)
                n = len(lat)
                total_failures += len(failures)
                rps = n / wall if wall > 0 else float("nan")
                p50, p99 = (np.percentile(lat, [50, 99]) * 1e3) if n else (np.nan, np.nan)
                rows.append(f"{batch:>5} {conc:>4} {n:>8} {rps:>8.1f} {rps * batch:>9.0f} "
                            f"{p50:>8.1f} {p99:>8.1f} {len(failures):>7}")
                print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)
                for f in failures[:3]:
                    print(f"      failure: {f}")

        print()
        cores = len(os.sched_getaffinity(0))
        print("in-process model.predict (no HTTP, no PNG decoding), same batches:")
        for batch in args.batches:
            x = images[:batch]
            one = in_process_rate(model, x, 1)
            line = f"  batch {batch:>3}: {one:>8.0f} images/s with 1 thread"
            if cores > 1:
                line += f", {in_process_rate(model, x, cores):>8.0f} with {cores} threads"
            print(line)
        rc = server.stop()
        err = server.log()
        print(f"\ngunicorn stopped: exit {rc}" + ("; TRACEBACK in its log" if "Traceback" in err
                                                  else ""))
        server = None
        if total_failures:
            print(f"FAILED: {total_failures} non-2xx or failed requests")
            return 1
        return 0 if rc == 0 else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"serve.py: error: {exc}", file=sys.stderr)
        return 1
    finally:
        STOP.set()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
