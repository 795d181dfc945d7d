"""Dynamic batching (service.batching): concurrent predictions share a pass.

In-process tests hold the worker's pass lock (``registry.lock``) while client
threads post, so the requests queue up deterministically; releasing the lock
lets them run. ``on_pass`` is wrapped to record every forward pass as
(model, images, requests). One test drives a real gevent worker under gunicorn.
"""
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from cnn.io import load_model, save_model
from service.batching import current_batcher
from tests.service.conftest import build_tiny
from tests.service.helpers import random_images
from tests.service.servers import ROOT, gunicorn, request

TOL = dict(rtol=1e-5, atol=1e-6)   # BLAS sums a batch's rows in another order


def batcher_of(app):
    with app.app_context():
        return current_batcher()


def record_passes(app):
    """The app's batcher and the list its passes are appended to."""
    batcher, passes = batcher_of(app), []
    original = batcher.on_pass

    def on_pass(served, images, requests):
        passes.append((served.name, images, requests))
        original(served, images, requests)
    batcher.on_pass = on_pass
    return batcher, passes


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def predict(app, x, model=None, endpoint="predict"):
    """(status, probabilities (N, K) or the error body) of one request."""
    client = app.test_client()
    if endpoint == "v2":
        body = {"inputs": [{"name": "input", "shape": [len(x), 1, 28, 28],
                            "datatype": "UINT8", "data": x.ravel().tolist()}]}
        r = client.post(f"/v2/models/{model or 'tiny'}/infer", json=body)
        if r.status_code != 200:
            return r.status_code, r.get_json()
        out = {o["name"]: o for o in r.get_json()["outputs"]}["probabilities"]
        return 200, np.array(out["data"], np.float32).reshape(out["shape"])
    query = f"?top_k=10&model={model}" if model else "?top_k=10"
    r = client.post("/predict" + query, json={"pixels": x.tolist()})
    if r.status_code != 200:
        return r.status_code, r.get_json()
    proba = np.zeros((len(x), 10), np.float32)
    for row, p in enumerate(r.get_json()["predictions"]):
        for t in p["top_k"]:
            proba[row, t["label"]] = t["probability"]
    return 200, proba


def queued_run(app, jobs):
    """Run ``jobs`` [(x, model, endpoint)] in threads while the pass lock is held,
    release it once all are queued; their (status, answer), in job order."""
    batcher = batcher_of(app)
    lock = app.extensions["cnn"].registry.lock
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        with lock:
            futures = []
            for x, model, endpoint in jobs:   # one at a time: arrival order is job order
                futures.append(pool.submit(predict, app, x, model, endpoint))
                wait_until(lambda: batcher.queued() == len(futures))
        return [f.result(timeout=30) for f in futures]


@pytest.fixture
def two_models_dir(models_dir, other_weights):
    shutil.copy(other_weights, models_dir / "other.npz")
    return models_dir


def test_concurrent_requests_share_one_pass_and_get_their_own_answers(app, tiny_model):
    _, passes = record_passes(app)
    xs = [random_images(1 + i % 3, seed=i) for i in range(8)]
    endpoints = ["predict", "v2"] * 4            # both APIs go through predict_proba
    answers = queued_run(app, [(x, None, e) for x, e in zip(xs, endpoints)])
    assert passes == [("tiny", sum(map(len, xs)), 8)]
    for x, (status, proba) in zip(xs, answers):
        assert status == 200
        np.testing.assert_allclose(proba, tiny_model.predict_proba(x), **TOL)
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'cnn_batch_requests_sum{model="tiny"} 8.0' in metrics
    assert f'cnn_batch_images_sum{{model="tiny"}} {sum(map(len, xs))}.0' in metrics


def test_a_lone_request_runs_at_once_whatever_the_delay(make_app, models_dir):
    app = make_app(models_dir, CNN_BATCH_DELAY_US=1_000_000)
    _, passes = record_passes(app)
    for seed in range(3):
        started = time.monotonic()
        assert predict(app, random_images(1, seed=seed))[0] == 200
        assert time.monotonic() - started < 0.5
    assert passes == [("tiny", 1, 1)] * 3


def test_the_delay_lets_later_requests_join_a_queued_pass(make_app, models_dir, tiny_model):
    """max 2 images: A and B run first; C leads the next pass and waits (up to
    the delay) until D, posted later, fills it."""
    app = make_app(models_dir, CNN_BATCH_MAX_SIZE=2, CNN_BATCH_DELAY_US=1_000_000)
    batcher, passes = record_passes(app)
    xs = [random_images(1, seed=i) for i in range(4)]
    lock = app.extensions["cnn"].registry.lock
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        with lock:
            futures = []
            for x in xs[:3]:
                futures.append(pool.submit(predict, app, x))
                wait_until(lambda: batcher.queued() == len(futures))
        wait_until(lambda: len(passes) == 1)
        time.sleep(0.05)
        started = time.monotonic()
        futures.append(pool.submit(predict, app, xs[3]))
        answers = [f.result(timeout=30) for f in futures]
    assert time.monotonic() - started < 0.9      # a full batch does not wait the delay
    assert passes == [("tiny", 2, 2), ("tiny", 2, 2)]
    for x, (status, proba) in zip(xs, answers):
        assert status == 200
        np.testing.assert_allclose(proba, tiny_model.predict_proba(x), **TOL)


def test_passes_never_exceed_the_max_batch_size(make_app, models_dir, tiny_model):
    app = make_app(models_dir, CNN_BATCH_MAX_SIZE=3)
    _, passes = record_passes(app)
    sizes = [1, 1, 2, 5, 1, 1, 1]                # 5 > 3 runs alone; order is kept
    xs = [random_images(n, seed=i) for i, n in enumerate(sizes)]
    answers = queued_run(app, [(x, None, "predict") for x in xs])
    assert passes == [("tiny", 2, 2), ("tiny", 2, 1), ("tiny", 5, 1), ("tiny", 3, 3)]
    for x, (status, proba) in zip(xs, answers):
        assert status == 200
        np.testing.assert_allclose(proba, tiny_model.predict_proba(x), **TOL)


def test_batching_off_runs_one_pass_per_request(make_app, models_dir):
    app = make_app(models_dir, CNN_BATCHING="0")
    _, passes = record_passes(app)
    lock = app.extensions["cnn"].registry.lock
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        with lock:
            futures = [pool.submit(predict, app, random_images(1, seed=i)) for i in range(4)]
            time.sleep(0.2)
        assert [f.result(timeout=30)[0] for f in futures] == [200] * 4
    assert passes == [("tiny", 1, 1)] * 4


def test_models_never_share_a_pass(make_app, two_models_dir, other_weights, tiny_model):
    app = make_app(two_models_dir)
    _, passes = record_passes(app)
    other = load_model(other_weights, threads=1)
    names = ["tiny", "other", "other", "tiny", "other", "tiny"]
    xs = [random_images(1, seed=i) for i in range(len(names))]
    answers = queued_run(app, [(x, name, "predict") for x, name in zip(xs, names)])
    assert passes == [("tiny", 3, 3), ("other", 3, 3)]
    for x, name, (status, proba) in zip(xs, names, answers):
        assert status == 200
        reference = tiny_model if name == "tiny" else other
        np.testing.assert_allclose(proba, reference.predict_proba(x), **TOL)


def test_a_failed_pass_answers_every_request_the_same_and_the_worker_goes_on(
        app, tiny_model, monkeypatch):
    served = app.extensions["cnn"].registry.models["tiny"]

    def broken(x, batch_size=256):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(served.plan, "logits", broken)
    answers = queued_run(app, [(random_images(1, seed=i), None, e)
                               for i, e in enumerate(["predict", "v2", "predict"])])
    assert {status for status, _ in answers} == {500}
    errors = {body["error"] for _, body in answers}
    assert len(errors) == 1 and "forward pass of model 'tiny' failed" in errors.pop()
    monkeypatch.undo()
    x = random_images(2, seed=9)
    status, proba = predict(app, x)
    assert status == 200
    np.testing.assert_allclose(proba, tiny_model.predict_proba(x), **TOL)


@pytest.mark.parametrize("bad", ["CNN_BATCHING=maybe", "CNN_BATCH_MAX_SIZE=0",
                                 "CNN_BATCH_MAX_SIZE=257", "CNN_BATCH_DELAY_US=-1",
                                 "CNN_BATCH_DELAY_US=2000000"])
def test_bad_settings_are_refused_by_name(make_app, models_dir, bad):
    key, value = bad.split("=")
    with pytest.raises(ValueError, match=key):
        make_app(models_dir, **{key: value})


def test_gunicorn_merges_concurrent_requests(tmp_path, tiny_model):
    """One gevent worker, 16 clients: answers equal model.predict_proba of each
    client's own image, and fewer passes than requests ran."""
    import io
    import json
    folder = tmp_path / "models"
    folder.mkdir()
    # a convnet-sized model, so that a pass lasts long enough for others to queue
    model = build_tiny(arch="conv32k3p1-relu-maxpool2-conv64k3p1-relu-maxpool2-flatten-dense10")
    save_model(folder / "big.npz", model)
    model = load_model(folder / "big.npz", threads=1)
    images = random_images(64, seed=3)

    def body(x):
        buf = io.BytesIO()
        np.save(buf, x)
        return buf.getvalue()

    def client(port, k):
        got = []
        for i in range(k, 64, 16):
            status, _, answer = request(port, "POST", "/predict?top_k=10",
                                        body=body(images[i:i + 1]),
                                        headers={"Content-Type": "application/x-npy"})
            assert status == 200, answer
            got.append((i, answer["predictions"][0]["top_k"]))
        return got

    with gunicorn(folder, tmp_path, CNN_WORKERS="1") as server:
        port = server["port"]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = [r for f in [pool.submit(client, port, k) for k in range(16)]
                       for r in f.result(timeout=60)]
        _, _, metrics = request(port, "GET", "/metrics")
    assert len(results) == 64
    reference = model.predict_proba(images)
    for i, top_k in results:
        proba = np.zeros(10, np.float32)
        for t in top_k:
            proba[t["label"]] = t["probability"]
        np.testing.assert_allclose(proba, reference[i], **TOL)
    text = metrics.decode() if isinstance(metrics, bytes) else json.dumps(metrics)
    count = float(text.split('cnn_batch_requests_count{model="big"} ')[1].split()[0])
    total = float(text.split('cnn_batch_requests_sum{model="big"} ')[1].split()[0])
    assert total == 64 and count < 64, (count, total)


GEVENT_SCRIPT = r"""
from gevent import monkey; monkey.patch_all()
import gevent, numpy as np
from service.batching import Batcher
from service.models import FifoLock
from tests.service.conftest import build_tiny

class Served:
    name, lock, model = "tiny", FifoLock(), build_tiny()
    plan = model.compile()

served, passes = Served(), []
batcher = Batcher(max_size=8, on_pass=lambda s, images, requests: passes.append(requests))
xs = [np.full((1, 28, 28), 40 * i, np.uint8) for i in range(4)]
served.lock.acquire()                      # a pass in progress: everyone queues
greenlets = [gevent.spawn(batcher.predict_proba, served, x) for x in xs]
gevent.sleep(0.05)
assert batcher.queued() == 4
greenlets[1].kill()                        # a waiting request goes away
greenlets[0].kill()                        # so does the leader, before its pass
served.lock.release()
gevent.joinall(greenlets, timeout=10)
assert all(g.dead for g in greenlets)
for i in (2, 3):
    np.testing.assert_allclose(greenlets[i].value, served.model.predict_proba(xs[i]),
                               rtol=1e-5, atol=1e-6)
assert passes == [2] and batcher.queued() == 0
later = gevent.spawn(batcher.predict_proba, served, xs[0])
later.join(timeout=10)
np.testing.assert_allclose(later.value, served.model.predict_proba(xs[0]), rtol=1e-5, atol=1e-6)
assert passes == [2, 1]
print("ok")
"""


def test_greenlets_that_go_away_leave_the_queue_and_the_lead(tmp_path):
    """Under gevent (as in a worker): a killed waiter leaves the queue, a killed
    leader hands the lead on, the others are answered and the next request runs."""
    r = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


@pytest.mark.parametrize("batching", [True, False])
def test_predictions_run_the_compiled_plan_and_leave_the_model_untouched(make_app, models_dir,
                                                                          tiny_model, batching):
    """The service answers through each model's inference plan (cnn.plan), which
    keeps nothing between calls: no layer of the loaded model holds a cache, and
    the answers equal the model's own."""
    app = make_app(models_dir, CNN_BATCHING=batching)
    served = app.extensions["cnn"].registry.models["tiny"]
    calls = []
    original = served.plan.logits

    def counting(x, batch_size=256):
        calls.append(len(x))
        return original(x, batch_size)
    served.plan.logits = counting
    for endpoint in ("predict", "v2"):
        x = random_images(3, seed=len(calls))
        status, proba = predict(app, x, endpoint=endpoint)
        assert status == 200
        np.testing.assert_allclose(proba, tiny_model.predict_proba(x), **TOL)
    assert calls == [3, 3]
    assert all(layer.cache is None for layer in served.model.layers)
