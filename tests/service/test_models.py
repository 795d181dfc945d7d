"""The models folder: which files are served, failures, default, /models, readiness."""
import io
import json
import shutil
import time
import tracemalloc

import numpy as np
import pytest

from cnn.io import load_model
from tests import hostile


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def write_corrupt(folder):
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 this is not really a zip file")


def test_good_and_corrupt_files(make_app, models_dir):
    write_corrupt(models_dir)
    (models_dir / "tiny.ckpt").write_bytes((models_dir / "tiny.npz").read_bytes())
    (models_dir / "tiny.history.json").write_text("{}")
    (models_dir / ".tiny.npz.abc.tmp").write_bytes(b"partial")
    (models_dir / ".hidden.npz").write_bytes(b"partial")
    (models_dir / "notes.txt").write_text("hello")
    (models_dir / "folder.npz").mkdir()
    app = make_app(models_dir)
    client = app.test_client()

    info = client.get("/models").get_json()
    assert [m["name"] for m in info["models"]] == ["tiny"]
    assert info["default"] == "tiny"
    assert [f["name"] for f in info["failed"]] == ["broken"]
    failed = info["failed"][0]
    assert failed["file"] == "broken.npz"
    assert "not a readable cnn weights file" in failed["error"]
    assert str(models_dir) not in failed["error"]  # no server paths in answers

    assert client.get("/ready").status_code == 200
    body = client.post("/predict", json={"pixels": [[0] * 28] * 28}).get_json()
    assert body["model"] == "tiny"
    body = assert_error(client.get("/models/broken"), 503)
    assert "failed to load" in body["error"]
    assert_error(client.post("/predict?model=broken", json={"pixels": [[0] * 28] * 28}), 503)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'cnn_model_load_failures_total{model="broken"} 1.0' in metrics
    assert "cnn_models_loaded 1.0" in metrics


def test_wrong_kind_of_npz(make_app, models_dir):
    np.savez(models_dir / "plain.npz", a=np.zeros(3))
    info = make_app(models_dir).test_client().get("/models").get_json()
    assert "__meta__ member" in info["failed"][0]["error"]


def test_empty_models_folder(make_app, tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    client = make_app(folder).test_client()
    assert client.get("/health").status_code == 200
    body = assert_error(client.get("/ready"), 503)
    assert body["ready"] is False and body["models"] == []
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/models").get_json() == {"default": None, "models": [], "failed": []}
    assert_error(client.post("/predict", json={"pixels": [[0] * 28] * 28}), 503)


def test_missing_models_folder(make_app, tmp_path):
    client = make_app(tmp_path / "does-not-exist").test_client()
    assert client.get("/health").status_code == 200
    assert "cannot read the models folder" in assert_error(client.get("/ready"), 503)["error"]


def test_only_corrupt_files(make_app, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    write_corrupt(folder)
    client = make_app(folder).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503
    assert client.get("/models").get_json()["failed"][0]["name"] == "broken"


def test_truncated_weights_file(make_app, models_dir, tiny_weights):
    data = tiny_weights.read_bytes()
    (models_dir / "cut.npz").write_bytes(data[: len(data) // 2])
    info = make_app(models_dir).test_client().get("/models").get_json()
    assert [f["name"] for f in info["failed"]] == ["cut"]


def test_default_model_setting(make_app, models_dir, other_weights):
    shutil.copy(other_weights, models_dir / "other.npz")
    client = make_app(models_dir, CNN_DEFAULT_MODEL="tiny.npz").test_client()
    info = client.get("/models").get_json()
    assert info["default"] == "tiny"
    assert [m["default"] for m in info["models"]] == [False, True]  # other, tiny
    assert client.post("/predict", json={"pixels": [[0] * 28] * 28}).get_json()["model"] \
        == "tiny"


def test_default_model_missing_is_not_ready(make_app, models_dir):
    client = make_app(models_dir, CNN_DEFAULT_MODEL="convnet").test_client()
    body = assert_error(client.get("/ready"), 503)
    assert "convnet" in body["error"]
    assert_error(client.post("/predict", json={"pixels": [[0] * 28] * 28}), 503)
    # the models that did load are still served by name
    r = client.post("/predict?model=tiny", json={"pixels": [[0] * 28] * 28})
    assert r.status_code == 200


def test_model_details(client, tiny_model):
    d = client.get("/models/tiny").get_json()
    assert d["name"] == "tiny" and d["file"] == "tiny.npz" and d["default"] is True
    assert d["input_shape"] == [1, 28, 28]
    assert d["classes"] == list(tiny_model.class_names) and d["num_classes"] == 10
    assert d["parameters"] == tiny_model.num_params()
    assert d["architecture"]["name"] == "conv4k3p1-relu-maxpool2-flatten-dense10"
    assert [layer["type"] for layer in d["architecture"]["layers"]] == [
        "Conv2D", "ReLU", "MaxPool2D", "Flatten", "Dense"]
    assert d["test_accuracy"] == 0.5
    assert d["trained_at"] == "2024-01-02T03:04:05+00:00"
    assert d["version"] == tiny_model.meta["saved_at"] == d["saved_at"]
    assert d["format_version"] == 1
    assert len(d["sha256"]) == 64
    assert d["threads"] == 1
    assert d == client.get("/models").get_json()["models"][0]
    assert_error(client.get("/models/nope"), 404)


def test_trained_model(make_app, tmp_path, trained_weights):
    """A model written by python -m cnn.train (with its .ckpt, history and plot
    beside it) is served and answers like cnn itself."""
    if trained_weights is None:
        pytest.skip("Fashion-MNIST is not installed")
    folder = trained_weights.parent
    assert (folder / "trained.ckpt").exists()
    client = make_app(folder).test_client()
    info = client.get("/models").get_json()
    assert [m["name"] for m in info["models"]] == ["trained"] and info["failed"] == []
    details = info["models"][0]
    assert 0 < details["test_accuracy"] <= 1 and details["trained_at"]
    from cnn.data import load_dataset
    from tests.service.helpers import png_bytes
    data = load_dataset()
    x, y = data.test_images[:64], data.test_labels[:64]
    model = load_model(trained_weights, threads=1)
    body = client.post("/predict", json={"pixels": x.tolist()}).get_json()
    labels = [p["label"] for p in body["predictions"]]
    assert labels == model.predict(x).tolist()
    assert (np.array(labels) == y).mean() > 0.2  # trained: better than chance (0.1)
    # the same images as PNG files (light on black: decoded to the same pixels)
    r = client.post("/predict", data={"images": [(io.BytesIO(png_bytes(a)), f"{i}.png")
                                                 for i, a in enumerate(x[:8])]},
                    content_type="multipart/form-data")
    assert [p["label"] for p in r.get_json()["predictions"]] == labels[:8]


# --------------------------------------------------------------------------- hostile files


def assert_no_server_paths(body, folder):
    """Answers name files relative to the models folder, in the user's terms."""
    text = json.dumps(body)
    assert str(folder.parent) not in text, text      # no absolute path, not even a prefix
    for python in ("Traceback", "PosixPath", "Error: ", "Error(", "<"):
        assert python not in text, (python, text)


def test_hostile_files_are_listed_and_the_good_one_served(make_app, models_dir):
    good = models_dir / "tiny.npz"
    hostile.unused_member(models_dir / "a_junk.npz", good, 512 << 20, crc=False)
    hostile.huge_optimizer_member(models_dir / "a_bomb.npz", good, 1 << 30)
    hostile.lying_array_header(models_dir / "a_lying.npz", good)
    hostile.huge_architecture(models_dir / "a_huge.npz", good)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        client = make_app(models_dir).test_client()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"loading the folder allocated {peak / 2**20:.0f} MiB"
    assert time.perf_counter() - started < 10

    info = client.get("/models").get_json()
    assert [m["name"] for m in info["models"]] == ["tiny"] and info["default"] == "tiny"
    errors = {f["name"]: f["error"] for f in info["failed"]}
    assert {f["file"] for f in info["failed"]} == {f"{n}.npz" for n in errors}
    assert "a_junk.npz: holds 'junk.npy', which is not part of a cnn weights file" \
        in errors["a_junk"]
    assert "1.0 GiB uncompressed" in errors["a_bomb"]
    assert "(100000, 100000) (37.3 GiB) but holds 16 bytes" in errors["a_lying"]
    assert "declares 10,140,306,100 parameters" in errors["a_huge"]
    assert_no_server_paths(info, models_dir)

    ready = client.get("/ready")
    assert ready.status_code == 200
    assert_no_server_paths(ready.get_json(), models_dir)
    assert client.post("/predict", json={"pixels": [[0] * 28] * 28}).get_json()["model"] \
        == "tiny"
    for url in ("/models/a_huge", "/predict?model=a_huge"):
        body = assert_error(client.post(url, json={"pixels": [[0] * 28] * 28})
                            if url.startswith("/predict") else client.get(url), 503)
        assert "declares 10,140,306,100 parameters" in body["error"]
        assert_no_server_paths(body, models_dir)


def test_not_ready_answers_name_no_server_path(make_app, tmp_path, tiny_weights):
    folder = tmp_path / "models"
    folder.mkdir()
    hostile.huge_architecture(folder / "huge.npz", tiny_weights)
    (folder / "back\\slash.npz").write_bytes(b"PK\x03\x04 not a zip")   # repr doubles \\
    client = make_app(folder).test_client()
    body = assert_error(client.get("/ready"), 503)
    assert body["error"] == ("no model is loaded: no loadable *.npz weights file in the "
                             "models folder")
    assert {f["file"] for f in body["failed"]} == {"huge.npz", "back\\slash.npz"}
    assert_no_server_paths(body, folder)
    body = assert_error(client.post("/predict", json={"pixels": [[0] * 28] * 28}), 503)
    assert_no_server_paths(body, folder)
    body = assert_error(make_app(tmp_path / "missing").test_client().get("/ready"), 503)
    assert body["error"] == ("no model is loaded: cannot read the models folder: No such "
                             "file or directory")
    client = make_app(folder, CNN_DEFAULT_MODEL="huge").test_client()
    assert_no_server_paths(assert_error(client.get("/ready"), 503), folder)
    assert_no_server_paths(client.get("/v2/health/ready").get_json() or {}, folder)


def test_unexpected_load_error_is_not_shown(make_app, models_dir, monkeypatch):
    def broken(path, **kwargs):
        raise RuntimeError(f"internal state at {path}")
    monkeypatch.setattr("service.models.load_model", broken)
    client = make_app(models_dir).test_client()
    failed = client.get("/models").get_json()["failed"]
    assert failed == [{"name": "tiny", "file": "tiny.npz", "error": "tiny.npz: could not be "
                       "loaded (an unexpected error; the server log has the details)"}]
    assert_no_server_paths(assert_error(client.get("/ready"), 503), models_dir)


def test_the_weights_file_cap_is_a_setting(make_app, models_dir):
    client = make_app(models_dir, CNN_MAX_MODEL_BYTES=1000).test_client()
    body = client.get("/ready").get_json()
    assert body["ready"] is False and body["models"] == []
    [failed] = body["failed"]
    assert failed["file"] == "tiny.npz" and "1000 bytes limit" in failed["error"]
    assert make_app(models_dir).test_client().get("/ready").status_code == 200


def test_forward_pass_lock_is_handed_over_in_arrival_order():
    import threading
    import time

    from service.models import FifoLock
    lock, order, threads = FifoLock(), [], []
    lock.acquire()

    def take(i):
        with lock:
            order.append(i)

    for i in range(6):
        t = threading.Thread(target=take, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while len(lock._waiters) < i + 1:   # queued before the next one starts
            assert time.monotonic() < deadline
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(timeout=5)
    assert order == list(range(6))
    assert lock.acquire() and (lock.release() is None)
    with pytest.raises(RuntimeError, match="unlocked"):
        lock.release()


class _InterruptedTurn:
    """A waiter's lock whose wait is interrupted (``on_wait`` runs first)."""

    def __init__(self, on_wait=None):
        self.calls, self.on_wait = 0, on_wait

    def acquire(self):
        self.calls += 1
        if self.calls == 1:
            return True            # taken at once, as FifoLock does
        if self.on_wait:
            self.on_wait()
        raise KeyboardInterrupt    # stands for a gevent Timeout or GreenletExit

    def release(self):
        pass


@pytest.mark.parametrize("handed_over", [False, True])
def test_an_interrupted_waiter_never_strands_the_lock(monkeypatch, handed_over):
    import service.models
    from service.models import FifoLock
    lock = FifoLock()
    lock.acquire()
    monkeypatch.setattr(service.models.threading, "Lock",
                        lambda: _InterruptedTurn(lock.release if handed_over else None))
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    assert not lock._waiters
    if handed_over:     # the holder handed it to the waiter, who passed it on
        assert lock._held is False
    else:               # still the first holder's
        assert lock._held is True
        lock.release()
    monkeypatch.undo()
    assert lock.acquire() and lock.release() is None
