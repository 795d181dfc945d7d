"""Hot-reload timeline under real gunicorn (a benchmark, not a test).

    python benchmarks/reload.py [--workers 2] [--clients 4] [--seconds 8]
                                [--replace-at 3] [--interval 2] [--json]

Starts gunicorn with the packaged settings (cnn.bench.server) on 127.0.0.1 (a
free port; nothing leaves the machine) with ``--workers`` workers and
``CNN_RELOAD_INTERVAL=--interval``, serving a temporary models folder that
holds model A as ``tiny.npz`` (a small random-weight network). ``--clients``
threads POST one image (``application/x-npy``) to ``/predict``, each request
on a new connection so that requests reach every worker, for ``--seconds``.
At ``--replace-at`` seconds model B is saved over ``tiny.npz`` with
``cnn.io.save_model``: a temporary file renamed over the old one, what
``python -m cnn.train`` does. Every answer is told apart by its probabilities
(A's or B's, computed in-process beforehand).

It prints the timeline: the replacement at t, the first answer of B at t+s,
the last answer of A (from then on every worker serves B), the requests per
second, and the failed requests (an error status, a refused connection, or an
answer that is neither A's nor B's) before, during and after the swap: the
service's promise is 0. Bounded: at most ``--seconds`` (<= 60) of load, 64
clients, and 30 s to start or stop the server. ``--json`` makes the last line
of stdout one JSON object of the same figures.
"""
import argparse
import contextlib
import http.client
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cnn.architectures import build_architecture
from cnn.bench.server import free_port, gunicorn_env, start, stop, wait_ready
from cnn.io import save_model

ARCH = "conv8k3p1-relu-maxpool2-flatten-dense10"
START_TIMEOUT = STOP_TIMEOUT = 30


def build_model(seed):
    model = build_architecture(ARCH)
    model.build(seed=seed)
    model.normalization = {"mean": 0.286, "std": 0.353}
    return model


def probe_body(seed=0):
    """(npy bytes of one 28x28 image, the image as (1, 28, 28) uint8)."""
    x = np.random.default_rng(seed).integers(0, 256, (1, 28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue(), x


def post(port, body, timeout=10):
    """(status, parsed answer or None) of one /predict on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/predict?top_k=1", body=body,
                     headers={"Content-Type": "application/x-npy"})
        resp = conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, None
    finally:
        conn.close()


def classify(answer, expected):
    """Which model answered ("A", "B"), or None: by the top probability."""
    try:
        p = answer["predictions"][0]
        got = (p["label"], p["probability"])
    except (KeyError, IndexError, TypeError):
        return None
    for name, (label, probability) in expected.items():
        if got[0] == label and abs(got[1] - probability) <= 1e-5 * max(1.0, probability):
            return name
    return None


def expected_answers(models, x):
    """{name: (label, top probability)} of each model on the probe image."""
    out = {}
    for name, model in models.items():
        proba = model.predict_proba(x)[0]
        out[name] = (int(proba.argmax()), float(proba.max()))
    return out


def replace_under_load(port, replace, body, expected, clients=4, seconds=8.0,
                       replace_at=3.0):
    """Load the server with ``clients`` threads for ``seconds``; call ``replace()``
    at ``replace_at`` seconds. Returns the timeline (seconds from the start)."""
    seconds = min(float(seconds), 60.0)
    results, lock = [], threading.Lock()
    start = time.monotonic()
    end = start + seconds

    def client():
        while time.monotonic() < end:
            sent = time.monotonic() - start
            try:
                status, answer = post(port, body)
                kind = classify(answer, expected) if status == 200 else None
            except OSError as exc:
                status, kind = type(exc).__name__, None
            with lock:
                results.append((sent, time.monotonic() - start, status, kind))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start + replace_at - time.monotonic()))
    replaced = time.monotonic() - start
    replace()
    replaced_done = time.monotonic() - start
    for t in threads:
        t.join(timeout=seconds + 30)
    results.sort()
    first_new = min((r[1] for r in results if r[3] == "B"), default=None)
    last_old = max((r[1] for r in results if r[3] == "A"), default=None)
    failed = [r for r in results if r[3] is None]
    swap_end = last_old if last_old is not None else replaced
    return {
        "replaced_at_s": round(replaced, 3),
        "replace_took_s": round(replaced_done - replaced, 3),
        "first_new_answer_s": None if first_new is None else round(first_new, 3),
        "new_after_s": None if first_new is None else round(first_new - replaced, 3),
        "last_old_answer_s": None if last_old is None else round(last_old, 3),
        "all_new_after_s": None if last_old is None else round(max(0.0, last_old - replaced),
                                                               3),
        "requests": len(results),
        "requests_per_s": round(len(results) / seconds, 1),
        "old_answers": sum(r[3] == "A" for r in results),
        "new_answers": sum(r[3] == "B" for r in results),
        "old_after_new": sum(1 for r in results if r[3] == "A" and first_new is not None
                             and r[0] > first_new),
        "failed": len(failed),
        "failed_before": sum(r[1] < replaced for r in failed),
        "failed_during": sum(replaced <= r[1] <= swap_end for r in failed),
        "failed_after": sum(r[1] > swap_end for r in failed),
        "failures": [{"at_s": round(r[1], 3), "status": r[2]} for r in failed[:10]],
    }


@contextlib.contextmanager
def gunicorn(models_dir, workers, interval, log):
    port = free_port()
    env = gunicorn_env(port, models_dir, workers, CNN_RELOAD_INTERVAL=interval,
                       drop=("CNN_THREADS", "CNN_DEFAULT_MODEL", "CNN_API_TOKEN",
                             "GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR"))
    proc = start(env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc, START_TIMEOUT)
        time.sleep(1.0)   # every worker, not only the first, has loaded the model
        yield port
    finally:
        stop(proc, STOP_TIMEOUT)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--replace-at", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 8 or not 1 <= args.clients <= 64:
        parser.error("--workers must be 1-8 and --clients 1-64")
    if not 0 < args.seconds <= 60 or not 0 <= args.replace_at < args.seconds:
        parser.error("--seconds must be in (0, 60] and --replace-at in [0, --seconds)")
    models = {"A": build_model(0), "B": build_model(1)}
    body, x = probe_body()
    expected = expected_answers(models, x)
    with tempfile.TemporaryDirectory(prefix="cnn-reload-") as tmp:
        folder = Path(tmp) / "models"
        folder.mkdir()
        target = folder / "tiny.npz"
        save_model(target, models["A"])
        with open(Path(tmp) / "gunicorn.log", "wb") as log, \
                gunicorn(folder, args.workers, args.interval, log) as port:
            timeline = replace_under_load(
                port, lambda: save_model(target, models["B"]), body, expected,
                args.clients, args.seconds, args.replace_at)
    timeline.update(workers=args.workers, clients=args.clients, interval_s=args.interval,
                    seconds=args.seconds)
    t = timeline["replaced_at_s"]
    print(f"gunicorn, {args.workers} workers, CNN_RELOAD_INTERVAL={args.interval:g} s; "
          f"{args.clients} clients, one /predict per connection, {args.seconds:g} s")
    print(f"  t = {t:.3f} s      tiny.npz replaced (atomic rename, "
          f"{timeline['replace_took_s'] * 1000:.0f} ms to save)")
    if timeline["first_new_answer_s"] is not None:
        print(f"  t + {timeline['new_after_s']:.3f} s  first answer of the new model")
    else:
        print("  the new model never answered")
    if timeline["last_old_answer_s"] is not None:
        print(f"  t + {timeline['all_new_after_s']:.3f} s  last answer of the old model "
              f"(every worker on the new one after it)")
    print(f"  {timeline['requests']} requests ({timeline['requests_per_s']} /s): "
          f"{timeline['old_answers']} old, {timeline['new_answers']} new, "
          f"{timeline['old_after_new']} old after the first new; failed: "
          f"{timeline['failed']} ({timeline['failed_before']} before, "
          f"{timeline['failed_during']} during, {timeline['failed_after']} after the swap)")
    if args.json:
        print(json.dumps(timeline))
    return 0 if timeline["failed"] == 0 and timeline["new_answers"] else 1


if __name__ == "__main__":
    sys.exit(main())
