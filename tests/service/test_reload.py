"""The models folder changes without a restart: hot reload, versions side by
side, Triton's model repository extension (in-process, then real gunicorn)."""
import importlib.util
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cnn.io import load_model, save_model
from service.models import STATE_FILE
from tests.service import servers
from tests.service.conftest import build_tiny
from tests.service.helpers import random_images

ROOT = servers.ROOT
TOKEN = "reload-token"
PIXELS = {"pixels": random_images(2, seed=5).tolist()}


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("reload_bench",
                                                  ROOT / "benchmarks" / "reload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def until(check, timeout=5.0, every=0.05):
    """The first truthy check() within ``timeout`` seconds, else fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(every)


def save(path, seed, arch="conv4k3p1-relu-maxpool2-flatten-dense10"):
    """cnn.io.save_model: a temporary file renamed over ``path`` (what cnn.train does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_tiny(seed=seed, arch=arch)
    save_model(path, model)
    return load_model(path, threads=1)


def replace_with_bytes(path, data):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def probabilities(client, url="/predict?model=tiny"):
    body = client.post(url, json=PIXELS).get_json()
    return [p["probability"] for p in body["predictions"]]


def expected(model):
    return model.predict_proba(np.array(PIXELS["pixels"], np.uint8)).max(axis=1).tolist()


def metric(client, name, **labels):
    """The value of the sample ``name`` with ``labels`` in /metrics (0 when absent)."""
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(
        as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


# --------------------------------------------------------------------------- in-process


def test_added_replaced_and_removed_files_are_followed(make_app, models_dir, tiny_model):
    client = make_app(models_dir, CNN_RELOAD_INTERVAL=0.1).test_client()
    assert probabilities(client) == pytest.approx(expected(tiny_model), abs=1e-6)

    added = save(models_dir / "new.npz", seed=7)
    until(lambda: [m["name"] for m in client.get("/models").get_json()["models"]]
          == ["new", "tiny"])
    assert probabilities(client, "/predict?model=new") == pytest.approx(expected(added),
                                                                         abs=1e-6)
    new_model = save(models_dir / "tiny.npz", seed=3)      # the atomic rename
    until(lambda: probabilities(client) == pytest.approx(expected(new_model), abs=1e-6))
    (models_dir / "new.npz").unlink()
    until(lambda: client.get("/models/new").status_code == 404)
    assert [m["name"] for m in client.get("/models").get_json()["models"]] == ["tiny"]
    for change in ("added", "replaced", "removed"):
        assert metric(client, "cnn_model_reloads_total", model="new" if change != "replaced"
                      else "tiny", change=change) == 1.0
    assert metric(client, "cnn_models_loaded") == 1.0


def test_a_corrupt_replacement_keeps_the_old_model(make_app, models_dir, tiny_model):
    app = make_app(models_dir, CNN_RELOAD_INTERVAL=0)   # refresh() by hand: no timing
    client, registry = app.test_client(), app.extensions["cnn"].registry
    sha = client.get("/models/tiny").get_json()["sha256"]
    replace_with_bytes(models_dir / "tiny.npz", b"PK\x03\x04 not a weights file")
    registry.refresh()
    assert client.get("/models/tiny").get_json()["sha256"] == sha
    assert probabilities(client) == pytest.approx(expected(tiny_model), abs=1e-6)
    assert client.get("/ready").status_code == 200
    [failed] = client.get("/models").get_json()["failed"]
    assert failed["file"] == "tiny.npz" and "not a readable cnn weights file" in \
        failed["error"] and "the previous file is still served" in failed["error"]
    assert metric(client, "cnn_model_load_failures_total", model="tiny") == 1.0
    registry.refresh()                                  # unchanged: not tried (nor counted) again
    assert metric(client, "cnn_model_load_failures_total", model="tiny") == 1.0
    fixed = save(models_dir / "tiny.npz", seed=4)
    registry.refresh()
    assert client.get("/models").get_json()["failed"] == []
    assert probabilities(client) == pytest.approx(expected(fixed), abs=1e-6)


def test_a_request_keeps_the_model_it_started_with(make_app, models_dir, tiny_model):
    app = make_app(models_dir, CNN_RELOAD_INTERVAL=0)
    registry = app.extensions["cnn"].registry
    in_flight = registry.get("tiny")
    save(models_dir / "tiny.npz", seed=9)
    registry.refresh()
    assert registry.get("tiny") is not in_flight
    x = random_images(2, seed=5)
    np.testing.assert_allclose(in_flight.predict_proba(x), tiny_model.predict_proba(x),
                               atol=1e-6)


def test_a_file_changing_while_it_is_read_is_read_again(make_app, models_dir, monkeypatch):
    """A copy still being written fails to load: not reported while it changes."""
    app = make_app(models_dir, CNN_RELOAD_INTERVAL=0)
    client, registry = app.test_client(), app.extensions["cnn"].registry
    target = models_dir / "tiny.npz"
    data = target.read_bytes()
    target.write_bytes(data[:100])                      # half written, in place
    import service.models
    real = service.models.load_model

    def slow_writer(path, **kwargs):
        try:
            return real(path, **kwargs)
        finally:
            with open(target, "ab") as f:               # the writer goes on meanwhile
                f.write(data[100:200])
    monkeypatch.setattr(service.models, "load_model", slow_writer)
    registry.refresh()
    assert client.get("/models").get_json()["failed"] == []
    assert metric(client, "cnn_model_load_failures_total", model="tiny") == 0.0


def test_versions_side_by_side(make_app, tmp_path):
    folder = tmp_path / "models"
    v1 = save(folder / "digits" / "1" / "model.npz", seed=1)
    v2 = save(folder / "digits" / "2" / "model.npz", seed=2)
    flat = save(folder / "tiny.npz", seed=0)
    (folder / "digits" / "latest").mkdir()              # not a version: ignored
    (folder / "digits" / "4").mkdir()                   # no model.npz yet: not a version
    app = make_app(folder, CNN_RELOAD_INTERVAL=0)
    client, registry = app.test_client(), app.extensions["cnn"].registry
    meta = client.get("/v2/models/digits").get_json()
    assert meta["versions"] == ["1", "2"]
    x = random_images(2, seed=5)
    body = {"inputs": [{"name": "input", "shape": [2, 28, 28], "datatype": "UINT8",
                        "data": x.ravel().tolist()}]}
    for url, version, model in (("/v2/models/digits/infer", "2", v2),
                                ("/v2/models/digits/versions/1/infer", "1", v1),
                                ("/v2/models/digits/versions/2/infer", "2", v2)):
        answer = client.post(url, json=body).get_json()
        assert answer["model_version"] == version, url
        probs = np.array(answer["outputs"][0]["data"]).reshape(2, 10)
        np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-6)
    assert client.post("/v2/models/digits/versions/3/infer", json=body).status_code == 404
    assert client.get("/v2/models/digits/versions/1/ready").status_code == 200
    listed = client.get("/models").get_json()
    assert [(m["name"], m["version"], m["file"], m["default"]) for m in listed["models"]] == [
        ("digits", "1", "digits/1/model.npz", False),
        ("digits", "2", "digits/2/model.npz", True),        # the default: the highest
        ("tiny", flat.meta["saved_at"], "tiny.npz", False)]
    assert client.get("/models/digits").get_json()["version"] == "2"

    (folder / "digits" / "3").mkdir()
    (folder / "digits" / "3" / "model.npz").write_bytes(b"not a weights file")
    shutil.copy(folder / "tiny.npz", folder / "digits.npz")     # the folder wins
    registry.refresh()
    assert client.get("/v2/models/digits").get_json()["versions"] == ["1", "2"]
    error = client.post("/v2/models/digits/versions/3/infer", json=body)
    assert error.status_code == 503 and "digits/3/model.npz" in error.get_json()["error"]
    failed = {f["file"]: f["error"] for f in client.get("/models").get_json()["failed"]}
    assert set(failed) == {"digits.npz", "digits/3/model.npz"}
    assert "served from the folder digits/" in failed["digits.npz"]
    index = client.post("/v2/repository/index").get_json()
    assert [(e["name"], e.get("version"), e["state"]) for e in index] == [
        ("digits", None, "UNAVAILABLE"), ("digits", "1", "READY"), ("digits", "2", "READY"),
        ("digits", "3", "UNAVAILABLE"), ("tiny", flat.meta["saved_at"], "READY")]
    shutil.rmtree(folder / "digits" / "2")
    registry.refresh()
    assert client.post("/v2/models/digits/infer", json=body).get_json()["model_version"] \
        == "1"


def test_repository_load_and_unload_reach_every_worker(make_app, models_dir, other_weights,
                                                       tmp_path):
    shutil.copy(other_weights, models_dir / "other.npz")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # two apps on one folder and one state folder: two workers
    apps = [make_app(models_dir, CNN_RELOAD_INTERVAL=60, CNN_STATE_DIR=str(state_dir),
                     CNN_API_TOKEN=TOKEN) for _ in range(2)]
    one, two = (a.test_client() for a in apps)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert one.post("/v2/repository/models/tiny/unload").status_code == 401
    assert one.post("/v2/repository/index").status_code == 401

    r = one.post("/v2/repository/models/tiny/unload", headers=auth,
                 json={"parameters": {"unload_dependents": False}})
    assert r.status_code == 200 and r.get_json() == {}
    assert json.loads((state_dir / STATE_FILE).read_text()) == {"unloaded": ["tiny"]}
    answer = one.post("/predict?model=tiny", json=PIXELS, headers=auth)
    assert answer.status_code == 503 and "unloaded" in answer.get_json()["error"]
    assert one.post("/predict", json=PIXELS, headers=auth).get_json()["model"] == "other"
    apps[1].extensions["cnn"].registry.refresh()          # the other worker's next look
    assert two.post("/predict?model=tiny", json=PIXELS, headers=auth).status_code == 503
    index = two.post("/v2/repository/index", headers=auth).get_json()
    assert {e["name"]: (e["state"], e.get("reason")) for e in index} == {
        "other": ("READY", None), "tiny": ("UNAVAILABLE", "unloaded")}
    assert [e["name"] for e in two.post("/v2/repository/index", headers=auth,
                                        json={"ready": True}).get_json()] == ["other"]
    assert metric(two, "cnn_model_reloads_total", model="tiny", change="unloaded") == 1.0

    assert two.post("/v2/repository/models/tiny/load", headers=auth).status_code == 200
    assert json.loads((state_dir / STATE_FILE).read_text()) == {"unloaded": []}
    assert two.post("/predict?model=tiny", json=PIXELS, headers=auth).status_code == 200
    apps[0].extensions["cnn"].registry.refresh()
    assert one.post("/predict?model=tiny", json=PIXELS, headers=auth).status_code == 200


@pytest.mark.parametrize("url, body, status, needle", [
    ("/v2/repository/models/nope/load", None, 404, "no weights file for model 'nope'"),
    ("/v2/repository/models/nope/unload", None, 404, "no weights file for model 'nope'"),
    ("/v2/repository/models/tiny/load", {"parameters": {"config": "{}"}}, 400,
     "models are loaded from the models folder only"),
    ("/v2/repository/models/tiny/load", {"parameters": {"file:1/model.npz": "AAAA"}}, 400,
     "models are loaded from the models folder only"),
    ("/v2/repository/models/tiny/load", {"parameters": 3}, 400, "'parameters' must be"),
    ("/v2/repository/models/tiny/load", [1], 400, "must be a JSON object"),
    ("/v2/repository/index", {"ready": "yes"}, 400, "'ready' must be true or false"),
    ("/v2/repository/index", {"ready": "x" * 70000}, 413, "at most 65536 bytes"),
])
def test_repository_bad_requests(make_app, models_dir, url, body, status, needle):
    client = make_app(models_dir).test_client()
    r = client.post(url, json=body) if body is not None else client.post(url)
    assert r.status_code == status and needle in r.get_json()["error"], r.get_json()


def test_repository_without_model_control_or_writable_state(make_app, models_dir, tmp_path):
    client = make_app(models_dir, CNN_RELOAD_INTERVAL=0).test_client()
    r = client.post("/v2/repository/models/tiny/unload")
    assert r.status_code == 409 and "CNN_RELOAD_INTERVAL=0" in r.get_json()["error"]
    (tmp_path / "a-file").write_text("")
    client = make_app(models_dir, CNN_STATE_DIR=str(tmp_path / "a-file")).test_client()
    r = client.post("/v2/repository/models/tiny/unload")
    assert r.status_code == 503 and "CNN_STATE_DIR" in r.get_json()["error"]
    assert str(tmp_path) not in r.get_json()["error"]
    assert client.post("/predict?model=tiny", json=PIXELS).status_code == 200
    # a broken state file is ignored (logged), the models stay served
    (models_dir / STATE_FILE).write_text("{not json")
    app = make_app(models_dir)
    assert app.test_client().post("/predict?model=tiny", json=PIXELS).status_code == 200


def test_load_retries_a_failed_file(make_app, models_dir, tiny_weights):
    (models_dir / "late.npz").write_bytes(b"not yet")
    app = make_app(models_dir)
    client = app.test_client()
    r = client.post("/v2/repository/models/late/load")
    assert r.status_code == 503 and "late.npz" in r.get_json()["error"]
    shutil.copy(tiny_weights, models_dir / "late.npz")
    assert client.post("/v2/repository/models/late/load").status_code == 200
    assert client.post("/predict?model=late", json=PIXELS).status_code == 200


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "7200"])
def test_reload_interval_setting_is_checked(make_app, models_dir, value):
    with pytest.raises(ValueError, match="CNN_RELOAD_INTERVAL"):
        make_app(models_dir, CNN_RELOAD_INTERVAL=value)


# --------------------------------------------------------------------------- gunicorn


def _pids_of(log, marker):
    """The worker pids of the access-log lines of requests carrying ``marker``."""
    return set(re.findall(rf"{marker}.*<(\d+)>\s*$", servers.read_log(log), re.M))


def every_worker(port, log, path, check, marker, timeout=10.0, streak=16):
    """``streak`` answers in a row on new connections pass ``check``, and both
    workers answered some of them (read from the access log)."""
    deadline = time.monotonic() + timeout
    good = 0
    n = 0
    while True:
        n += 1
        status, _, body = servers.request(port, "GET", f"{path}?{marker}={n}")
        good = good + 1 if check(status, body) else 0
        if good >= streak and len(_pids_of(log, rf"{marker}=\d+")) >= 2:
            return
        assert time.monotonic() < deadline, (status, body, good, _pids_of(log, marker))


def test_every_gunicorn_worker_follows_the_folder(tmp_path):
    bench = _load_benchmark()
    folder = tmp_path / "models"
    folder.mkdir()
    models = {"A": bench.build_model(0), "B": bench.build_model(1)}
    save_model(folder / "tiny.npz", models["A"])
    logs = tmp_path / "logs"
    logs.mkdir()
    body, x = bench.probe_body()
    wanted = bench.expected_answers(models, x)
    with servers.gunicorn(folder, logs, CNN_WORKERS="2", CNN_RELOAD_INTERVAL="0.5") as srv:
        port, log = srv["port"], srv["stdout"]
        every_worker(port, log, "/models", lambda s, b: s == 200, "warm")
        # replaced under load: nothing fails, the answers switch to B
        timeline = bench.replace_under_load(port, lambda: save_model(folder / "tiny.npz",
                                                                      models["B"]),
                                            body, wanted, clients=3, seconds=3.0,
                                            replace_at=1.0)
        assert timeline["failed"] == 0, timeline
        assert timeline["old_answers"] > 0 and timeline["new_answers"] > 0, timeline
        assert timeline["all_new_after_s"] < 1.5, timeline

        # added, then removed: every worker follows
        shutil.copy(folder / "tiny.npz", folder / "added.npz")
        every_worker(port, log, "/models/added", lambda s, b: s == 200, "add")
        (folder / "added.npz").unlink()
        every_worker(port, log, "/models/added", lambda s, b: s == 404, "rm")

        # a corrupt replacement: B still answers everywhere, the failure is listed
        replace_with_bytes(folder / "tiny.npz", b"PK\x03\x04 broken")
        every_worker(port, log, "/models", lambda s, b: [f["file"] for f in b["failed"]]
                     == ["tiny.npz"], "bad")
        every_worker(port, log, "/v2/models/tiny/ready", lambda s, b: s == 200, "still")
        save_model(folder / "tiny.npz", models["A"])
        every_worker(port, log, "/models", lambda s, b: b["failed"] == [], "good")

        # unload reaches one worker; every worker follows; load brings it back
        status, _, answer = servers.request(port, "POST",
                                            "/v2/repository/models/tiny/unload")
        assert (status, answer) == (200, {})
        every_worker(port, log, "/v2/models/tiny/ready", lambda s, b: s == 503, "unl")
        # (every worker follows within the interval: ask until this one has)
        deadline = time.monotonic() + 10
        while True:
            status, _, index = servers.request(port, "POST", "/v2/repository/index")
            rows = [(e["name"], e["state"], e.get("reason")) for e in index]
            if rows == [("tiny", "UNAVAILABLE", "unloaded")] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert rows == [("tiny", "UNAVAILABLE", "unloaded")]
        status, _, answer = servers.request(port, "POST", "/v2/repository/models/tiny/load")
        assert (status, answer) == (200, {})
        every_worker(port, log, "/v2/models/tiny/ready", lambda s, b: s == 200, "load")
    assert "Traceback" not in servers.read_log(srv["stderr"])
