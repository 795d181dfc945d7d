"""The app factory, configuration, health, index page, metrics, error handling."""
import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from service import create_app
from service.config import DEFAULTS, available_cores, default_threads, load_config
from tests.service.conftest import REPO
from tests.service.helpers import png_bytes, random_images


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# --------------------------------------------------------------------------
# Configuration.

def test_defaults():
    config, extra = load_config(environ={})
    assert config["CNN_MODEL_DIR"] == "models"
    assert config["CNN_DEFAULT_MODEL"] is None
    assert config["CNN_MAX_CONTENT_LENGTH"] == 16 * 1024 * 1024
    assert config["CNN_MAX_IMAGES"] == 256
    assert config["CNN_WORKERS"] == 1
    assert config["CNN_THREADS"] == available_cores()
    assert extra == {}


def test_environment_then_test_config():
    env = {"CNN_MODEL_DIR": "/srv/models", "CNN_DEFAULT_MODEL": "convnet.npz",
           "CNN_MAX_CONTENT_LENGTH": "1_000", "CNN_MAX_IMAGES": "8", "CNN_MAX_PIXELS": "99",
           "CNN_THREADS": "3", "CNN_BACKEND": "Python", "CNN_WORKERS": ""}
    config, _ = load_config(environ=env)
    assert config["CNN_MODEL_DIR"] == "/srv/models"
    assert config["CNN_DEFAULT_MODEL"] == "convnet"
    assert (config["CNN_MAX_CONTENT_LENGTH"], config["CNN_MAX_IMAGES"],
            config["CNN_MAX_PIXELS"], config["CNN_THREADS"]) == (1000, 8, 99, 3)
    assert config["CNN_BACKEND"] == "python"
    assert config["CNN_WORKERS"] == 1
    config, extra = load_config({"CNN_MAX_IMAGES": 2, "TESTING": True}, environ=env)
    assert config["CNN_MAX_IMAGES"] == 2 and extra == {"TESTING": True}


def test_threads_default_divides_cores_between_workers():
    assert default_threads(1, cores=8) == 8
    assert default_threads(3, cores=8) == 2
    assert default_threads(16, cores=8) == 1
    config, _ = load_config(environ={"CNN_WORKERS": "4"})
    assert config["CNN_THREADS"] == max(1, available_cores() // 4)


def test_cgroup_cpu_quota(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert available_cores(str(v2)) == min(2, available_cores(str(tmp_path / "none")))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert available_cores(str(v2)) == available_cores(str(tmp_path / "none"))
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(str(tmp_path / "v1")) == 1


@pytest.mark.parametrize("key, value", [
    ("CNN_MAX_IMAGES", "lots"), ("CNN_MAX_IMAGES", "0"), ("CNN_THREADS", "-2"),
    ("CNN_MAX_CONTENT_LENGTH", "1.5"), ("CNN_BACKEND", "gpu"), ("CNN_WORKERS", "two"),
])
def test_bad_environment_fails_at_startup(monkeypatch, tmp_path, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=key):
        create_app({"CNN_MODEL_DIR": str(tmp_path)})


def test_environment_is_read_by_create_app(monkeypatch, models_dir):
    monkeypatch.setenv("CNN_MODEL_DIR", str(models_dir))
    monkeypatch.setenv("CNN_MAX_IMAGES", "7")
    monkeypatch.setenv("CNN_THREADS", "1")
    app = create_app({"TESTING": True})
    assert app.config["CNN_MAX_IMAGES"] == 7
    assert app.config["MAX_CONTENT_LENGTH"] == DEFAULTS["CNN_MAX_CONTENT_LENGTH"]
    assert app.test_client().get("/ready").status_code == 200
    assert app.extensions["cnn"].registry.models["tiny"].model.threads == 1


def test_backend_setting(make_app, models_dir):
    app = make_app(models_dir, CNN_BACKEND="python")
    assert app.extensions["cnn"].registry.models["tiny"].model.backend == "python"


def test_apps_are_independent(make_app, models_dir, tmp_path):
    a = make_app(models_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    b = make_app(empty)
    assert a.test_client().get("/ready").status_code == 200
    assert b.test_client().get("/ready").status_code == 503


# --------------------------------------------------------------------------
# Health, index, errors.

def test_health_and_ready(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    body = client.get("/ready").get_json()
    assert body["ready"] is True and body["default"] == "tiny" and body["models"] == ["tiny"]


def test_index_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    for needle in ("<form", "<canvas", 'type="file"', "/predict", "fetch(", "/models"):
        assert needle in html
    assert "http://" not in html and "https://" not in html  # no CDN, nothing external
    # the served model's name and classes, not a hard-coded data set
    assert "<title>cnn: tiny classifier</title>" in html and ">tiny classifier</h1>" in html
    assert "Classes: T-shirt/top, Trouser," in html and "Fashion-MNIST classifier" not in html
    assert 'id="draw-panel">' in html   # a grayscale model: the canvas is offered
    csp = r.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in html


def test_index_page_of_a_colour_model_offers_no_canvas(make_app, tmp_path):
    from tests.service.helpers import save_colour_model
    models = tmp_path / "colour"
    save_colour_model(models, "pets", (16, 16), ["cat", "dog", "bird"])
    html = make_app(models).test_client().get("/").get_data(as_text=True)
    assert ">pets classifier</h1>" in html and "Classes: cat, dog, bird" in html
    assert 'id="draw-panel" hidden>' in html


def test_index_page_without_a_model(make_app, tmp_path):
    (tmp_path / "empty").mkdir()
    html = make_app(tmp_path / "empty").test_client().get("/").get_data(as_text=True)
    assert "No model is loaded on the server." in html


def test_unknown_url_and_method(client):
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/models/a/b"), 404)
    r = client.post("/health")
    assert_error(r, 405)
    assert "GET" in r.headers["Allow"]
    assert_error(client.delete("/models"), 405)


def test_unexpected_exception_is_json_500(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")
    r = app.test_client().get("/boom")
    body = assert_error(r, 500)
    assert body == {"error": "internal server error"}


def test_security_header(client):
    assert client.get("/health").headers["X-Content-Type-Options"] == "nosniff"


# --------------------------------------------------------------------------
# Metrics.

def test_metrics(client):
    png = png_bytes(random_images(1)[0])
    client.post("/predict", data={"images": [(io.BytesIO(png), "a.png")]},
                content_type="multipart/form-data")
    client.post("/predict", json={"pixels": random_images(3).tolist()})
    client.post("/predict", json={"pixels": "bad"})
    client.post("/v2/models/tiny/infer", json={"inputs": [{
        "name": "input", "shape": [2, 28, 28], "datatype": "UINT8",
        "data": random_images(2).ravel().tolist()}]})
    client.get("/nope")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert 'cnn_http_requests_total{endpoint="/predict",method="POST",status="200"} 2.0' in text
    assert 'cnn_http_requests_total{endpoint="/predict",method="POST",status="400"} 1.0' in text
    assert ('cnn_http_requests_total{endpoint="/v2/models/<name>/infer",method="POST",'
            'status="200"} 1.0') in text
    assert 'cnn_http_requests_total{endpoint="<unmatched>",method="GET",status="404"} 1.0' \
        in text
    assert 'cnn_http_request_duration_seconds_count{endpoint="/predict"} 3.0' in text
    assert 'cnn_images_per_request_count{endpoint="/predict"} 2.0' in text
    assert 'cnn_images_per_request_sum{endpoint="/predict"} 4.0' in text
    assert 'cnn_images_per_request_bucket{endpoint="/predict",le="4.0"} 2.0' in text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("cnn_predictions_total{") and 'model="tiny"' in line)
    assert total == 6  # 1 + 3 images on /predict, 2 on /v2
    assert 'cnn_model_load_failures_total' in text
    assert "cnn_models_loaded 1.0" in text


def test_metrics_across_processes(tmp_path, models_dir):
    """With PROMETHEUS_MULTIPROC_DIR (gunicorn, several workers) /metrics adds up
    the counters of every process."""
    prom = tmp_path / "prom"
    prom.mkdir()
    script = f"""
import json, sys
from service import create_app
app = create_app({{"CNN_MODEL_DIR": {str(models_dir)!r}, "CNN_THREADS": 1}})
c = app.test_client()
c.post("/predict", json={{"pixels": [[0] * 28] * 28}})
if sys.argv[1] == "report":
    sys.stdout.write(c.get("/metrics").get_data(as_text=True))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), PROMETHEUS_MULTIPROC_DIR=str(prom))
    subprocess.run([sys.executable, "-c", script, "quiet"], env=env, check=True,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-c", script, "report"], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert 'cnn_http_requests_total{endpoint="/predict",method="POST",status="200"} 2.0' in out


# --------------------------------------------------------------------------
# Concurrency: threads sharing one app and one model.

def test_concurrent_predictions_agree(app, tiny_model):
    batches = [random_images(1 + i % 5, seed=i) for i in range(24)]
    expected = [tiny_model.predict_proba(b) for b in batches]
    results, failures = {}, []

    def work(indices):
        client = app.test_client()
        for i in indices:
            r = client.post("/predict?top_k=10", json={"pixels": batches[i].tolist()})
            if r.status_code != 200:
                failures.append(r.get_json())
                continue
            results[i] = r.get_json()

    threads = [threading.Thread(target=work, args=(range(k, 24, 6),)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    for i, body in results.items():
        got = np.zeros_like(expected[i])
        for row, p in enumerate(body["predictions"]):
            for t in p["top_k"]:
                got[row, t["label"]] = t["probability"]
        np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-7)
    assert len(results) == 24


def test_forward_passes_are_serialised(make_app, models_dir, other_weights):
    """One forward pass at a time per worker, whichever model: a predict waits
    while the (shared) model lock is held."""
    import shutil
    shutil.copy(other_weights, models_dir / "other.npz")
    app = make_app(models_dir)
    registry = app.extensions["cnn"].registry
    assert registry.models["tiny"].lock is registry.models["other"].lock
    statuses = []

    def predict():
        r = app.test_client().post("/predict?model=other", json={"pixels": [[0] * 28] * 28})
        statuses.append(r.status_code)

    with registry.lock:
        t = threading.Thread(target=predict)
        t.start()
        t.join(0.5)
        assert t.is_alive() and statuses == []
    t.join(10)
    assert statuses == [200]
