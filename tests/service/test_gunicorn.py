"""The service under real gunicorn, as deployed: gunicorn.conf.py, 2 workers,
a freshly trained model, real PNG files of the Fashion-MNIST test set.

Loopback only (127.0.0.1, a free port) and bounded: training a tiny model takes
a few seconds, gunicorn must be ready and stop within the times of
tests/service/servers.py. Skipped when the data set is not installed.
"""
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import cnn
from cnn.data import DataError, load_dataset
from tests.service.servers import ROOT, STOP_TIMEOUT, gunicorn, read_log, request

TRAIN_TIMEOUT = 300
N_IMAGES = 24


def multipart(files):
    """(body, content type) of a multipart/form-data body with ``[(filename, bytes)]``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                     f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n".encode()
                     + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"




@pytest.fixture(scope="module")
def test_images():
    try:
        ds = load_dataset()
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    return ds.test_images[:N_IMAGES], ds.test_labels[:N_IMAGES]


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, test_images):
    """A model trained for one epoch on 1000 images, in its own models folder."""
    models = tmp_path_factory.mktemp("gunicorn") / "models"
    out = models / "tiny.npz"
    r = subprocess.run([sys.executable, "-m", "cnn.train", "--limit", "1000", "--epochs", "1",
                        "--out", str(out), "--progress", "lines"],
                       cwd=ROOT, capture_output=True, text=True, timeout=TRAIN_TIMEOUT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.is_file()
    return out


@pytest.fixture(scope="module")
def server(trained_tiny, tmp_path_factory):
    """A running gunicorn (2 workers) serving trained_tiny on 127.0.0.1:<port>."""
    with gunicorn(trained_tiny.parent, tmp_path_factory.mktemp("gunicorn-logs"),
                  CNN_WORKERS="2") as info:
        yield info


def png_bytes(pixels):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def test_ready_reports_the_model(server):
    status, _, body = request(server["port"], "GET", "/ready")
    assert status == 200 and body["ready"] is True
    assert body["default"] == "tiny" and body["models"] == ["tiny"]
    # tiny.ckpt / tiny.history.json / tiny.png beside it are not models
    assert body["failed"] == []


def test_png_files_are_classified_like_the_library(server, trained_tiny, test_images,
                                                   tmp_path):
    images, _ = test_images
    files = []
    for i, img in enumerate(images):
        path = tmp_path / f"test-{i:03d}.png"
        path.write_bytes(png_bytes(img))
        files.append((path.name, path.read_bytes()))
    body, ctype = multipart(files)
    status, headers, answer = request(server["port"], "POST", "/predict", body,
                                      {"Content-Type": ctype})
    assert status == 200, answer
    expected = cnn.load_model(str(trained_tiny)).predict(images)
    preds = answer["predictions"]
    assert answer["model"] == "tiny"
    assert [p["index"] for p in preds] == list(range(len(images)))
    assert [p["name"] for p in preds] == [name for name, _ in files]
    assert [p["label"] for p in preds] == expected.tolist()


def test_json_pixels_are_classified_like_the_library(server, trained_tiny, test_images):
    images, _ = test_images
    batch = images[:5]
    body = json.dumps({"pixels": batch.tolist()}).encode()
    status, _, answer = request(server["port"], "POST", "/predict?top_k=2", body,
                                {"Content-Type": "application/json"})
    assert status == 200, answer
    model = cnn.load_model(str(trained_tiny))
    expected = model.predict(batch)
    proba = model.predict_proba(batch)
    preds = answer["predictions"]
    assert [p["label"] for p in preds] == expected.tolist()
    assert all(len(p["top_k"]) == 2 for p in preds)
    np.testing.assert_allclose([p["probability"] for p in preds], proba.max(axis=1),
                               rtol=1e-5, atol=1e-6)


def test_both_workers_answer_with_one_kernel_thread_each(server):
    """gunicorn.conf.py gives each worker cores // workers kernel threads."""
    pids = set()
    for _ in range(20):
        status, headers, body = request(server["port"], "GET", "/models")
        assert status == 200
        assert body["models"][0]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    log = read_log(server["stderr"])
    pids = set(re.findall(r"worker (\d+): \d+ kernel threads \(2 workers", log))
    assert len(pids) == 2, log


def test_access_log_has_the_request_time(server):
    request(server["port"], "GET", "/health")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in read_log(server["stdout"]).splitlines()
                 if '"GET /health HTTP/1.1" 200' in line]
        if lines:
            break
        time.sleep(0.1)
    assert lines, read_log(server["stdout"])
    assert re.search(r" \d+\.\d{6}s <\d+>$", lines[-1]), lines[-1]


def test_metrics_add_up_all_workers(server):
    """/metrics counts the requests of both workers (multiprocess mode)."""
    port = server["port"]
    n = 12

    def count(text):
        total = 0.0
        for line in text.splitlines():
            if line.startswith("cnn_http_requests_total{") and 'endpoint="/health"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    _, _, before = request(port, "GET", "/metrics")
    for _ in range(n):
        # a new connection each time so both workers get some of them
        assert request(port, "GET", "/health")[0] == 200
    _, _, after = request(port, "GET", "/metrics")
    assert count(after.decode()) - count(before.decode()) == n


def test_npy_batches_are_classified_like_the_library(server, trained_tiny, test_images):
    images, _ = test_images
    buf = io.BytesIO()
    np.save(buf, images)
    status, _, answer = request(server["port"], "POST", "/predict", buf.getvalue(),
                                {"Content-Type": "application/x-npy"})
    assert status == 200, answer
    expected = cnn.load_model(str(trained_tiny)).predict(images)
    assert [p["label"] for p in answer["predictions"]] == expected.tolist()
    status, _, answer = request(server["port"], "POST", "/predict", buf.getvalue()[:-1],
                                {"Content-Type": "application/x-npy"})
    assert status == 400 and "truncated" in answer["error"]


def test_load_benchmark_json_contract(trained_tiny, tmp_path):
    """benchmarks/serve.py --json: its last stdout line is the summary object
    (``python -m cnn.bench`` parses it)."""
    cmd = [sys.executable, "benchmarks/serve.py", "--model", str(trained_tiny),
           "--batches", "4", "--concurrency", "1,2", "--workers", "2", "--requests", "6",
           "--seconds", "5", "--warmup", "1", "--format", "png,npy", "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name in ("CNN_THREADS", "CNN_DEFAULT_MODEL", "PROMETHEUS_MULTIPROC_DIR",
                 "GUNICORN_CMD_ARGS", "CNN_WORKERS"):
        env.pop(name, None)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["error"] is None and summary["non_2xx"] == 0
    assert summary["workers"] == 2 and summary["batch"] == 4
    assert summary["formats"] == ["png", "npy"] and summary["concurrency"] == [1, 2]
    rows = summary["rows"]
    assert [(row["format"], row["concurrency"]) for row in rows] == [
        ("png", 1), ("png", 2), ("npy", 1), ("npy", 2)]
    assert all(row["requests"] == 6 and row["images_per_s"] > 0 for row in rows)
    assert all(sum(row["requests_per_worker"]) == 6 for row in rows)
    best = max(rows, key=lambda row: row["images_per_s"])
    assert summary["http_images_per_s"] == best["images_per_s"]
    assert summary["format"] == best["format"]
    assert summary["inprocess_images_per_s"] > 0
    assert summary["ratio"] == pytest.approx(
        summary["http_images_per_s"] / summary["inprocess_images_per_s"], abs=1e-3)
    assert "in-process model.predict" in r.stdout


def test_sigterm_stops_gunicorn_cleanly(server):
    """Runs last in this module: the graceful shutdown itself is under test."""
    proc = server["proc"]
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=STOP_TIMEOUT)
    err = read_log(server["stderr"])
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert "Shutting down" in err or "Handling signal: term" in err, err
    assert not re.search(r"\[(ERROR|CRITICAL)\]", err), err
