"""Your own images end to end: train on an RGB image folder, then evaluate, the
prediction CLI and the service all see the held-out files as the same pixels and
give the same labels."""
import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnn.datasets import load_data
from cnn.images import UploadPolicy, decode_image, upload_policy
from cnn.io import load_model
from tests.test_images_crop import encode, varied_files
from tests.test_train import env

SIZE = (16, 16)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, model path, cache dir): a model trained by python -m cnn.train on
    DIR/train/{red,blue} (PNG, 20x24) and DIR/test/{red,blue} (every format and mode)."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for c, channel in (("blue", 2), ("red", 0)):
        for i in range(16):
            a = rng.integers(0, 96, (20, 24, 3), dtype=np.uint8)
            a[..., channel] += 150
            save_png(root / "d" / "train" / c / f"{i:02d}.png", a)
        for name, data in varied_files(rng).items():
            (root / "d" / "test" / c).mkdir(parents=True, exist_ok=True)
            (root / "d" / "test" / c / name).write_bytes(data)
    out, cache = root / "models" / "mine.npz", root / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "cnn.train", "--data-dir", str(root / "d"), "--image-size",
         "16x16", "--cache-dir", str(cache), "--out", str(out), "--epochs", "2",
         "--arch", "conv4k3p1-relu-maxpool2-flatten-dense2", "--progress", "lines"],
        env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return root, out, cache


def held_out_files(root):
    return sorted((root / "d" / "test").glob("*/*"))


def test_evaluate_predict_and_the_service_agree_on_the_held_out_files(trained, make_app):
    root, weights, cache = trained
    files = held_out_files(root)
    data = load_data(root / "d", image_size=SIZE, cache_dir=cache)
    assert data.input_shape == (3, 16, 16) and len(data.test_images) == len(files) == 16
    truth = np.array([["blue", "red"].index(f.parent.name) for f in files])
    np.testing.assert_array_equal(data.test_labels, truth)
    model = load_model(weights)
    assert model.summary_info["data"]["fit"] == "crop"
    assert model.summary_info["data"]["invert"] == "never"
    expected = model.predict(data.test_images)

    # python -m cnn.evaluate counts on the cached test images
    proc = subprocess.run([sys.executable, "-m", "cnn.evaluate", str(weights), "--data-dir",
                           str(root / "d"), "--cache-dir", str(cache), "--json"],
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["total"] == 16 and report["correct"] == int((expected == truth).sum())

    # python -m cnn.predict decodes the files themselves
    proc = subprocess.run([sys.executable, "-m", "cnn.predict", str(weights), *map(str, files),
                           "--json", "--top", "2"], env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    np.testing.assert_array_equal([a["label"] for a in answers], expected)
    assert [a["class"] for a in answers] == [["blue", "red"][k] for k in expected]

    # the service, from the same files uploaded
    client = make_app(weights.parent).test_client()
    body = {f"file{i}": (io.BytesIO(f.read_bytes()), f.name) for i, f in enumerate(files)}
    r = client.post("/predict?top_k=2", data=body, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    predictions = r.get_json()["predictions"]
    np.testing.assert_array_equal([p["label"] for p in predictions], expected)
    proba = model.predict_proba(data.test_images)
    got = np.array([[t["probability"] for t in sorted(p["top_k"], key=lambda t: t["label"])]
                    for p in predictions])
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-6)

    # one image as a JSON base64 string, and as the raw body
    r = client.post("/predict", json={"images": [base64.b64encode(files[3].read_bytes())
                                                 .decode()]})
    assert r.get_json()["predictions"][0]["label"] == expected[3]
    r = client.post("/predict", data=files[5].read_bytes(), content_type="image/jpeg")
    assert r.get_json()["predictions"][0]["label"] == expected[5]


def test_colour_pixels_arrays_in_both_layouts(trained, make_app):
    root, weights, cache = trained
    data = load_data(root / "d", image_size=SIZE, cache_dir=cache)
    model = load_model(weights)
    expected = model.predict(data.test_images)
    client = make_app(weights.parent).test_client()
    first = np.ascontiguousarray(data.test_images)        # (N, 3, H, W)
    last = first.transpose(0, 2, 3, 1).copy()              # (N, H, W, 3)
    for x in (first, last):
        buf = io.BytesIO()
        np.save(buf, x)
        r = client.post("/predict", data=buf.getvalue(), content_type="application/x-npy")
        assert r.status_code == 200, r.get_json()
        assert [p["label"] for p in r.get_json()["predictions"]] == expected.tolist()
        r = client.post("/predict", json={"pixels": x[:4].tolist()})
        assert [p["label"] for p in r.get_json()["predictions"]] == expected[:4].tolist()
    buf = io.BytesIO()
    np.save(buf, first[:, :, :, :8])
    r = client.post("/predict", data=buf.getvalue(), content_type="application/x-npy")
    assert r.status_code == 400
    assert "must have shape (N, 3, 16, 16) or (N, 16, 16, 3)" in r.get_json()["error"]
    r = client.post("/predict", json={"pixels": first[:1, :2].tolist()})
    assert r.status_code == 400 and "(N, 3, 16, 16) or (N, 16, 16, 3)" in r.get_json()["error"]


def test_a_photo_model_is_not_inverted_unless_asked(trained, make_app):
    root, weights, _ = trained
    model = load_model(weights)
    white = np.full((16, 16, 3), 250, np.uint8)
    white[5:11, 5:11] = (200, 10, 10)
    buf = io.BytesIO()
    Image.fromarray(white).save(buf, "PNG")
    client = make_app(weights.parent).test_client()

    def probabilities(query=""):
        r = client.post("/predict?top_k=2" + query, data=buf.getvalue(),
                        content_type="image/png")
        assert r.status_code == 200, r.get_json()
        top = r.get_json()["predictions"][0]["top_k"]
        return [t["probability"] for t in sorted(top, key=lambda t: t["label"])]
    np.testing.assert_allclose(probabilities(), model.predict_proba(white[None])[0], rtol=1e-5)
    np.testing.assert_allclose(probabilities("&invert=true"),
                               model.predict_proba(255 - white[None])[0], rtol=1e-5)


def test_models_say_how_image_files_become_input(trained, make_app, models_dir):
    root, weights, _ = trained
    (models_dir / "mine.npz").write_bytes(weights.read_bytes())
    described = {m["name"]: m for m in make_app(models_dir).test_client()
                 .get("/models").get_json()["models"]}
    assert described["mine"]["input_shape"] == [3, 16, 16]
    assert described["mine"]["input"] == {"channels": 3, "height": 16, "width": 16,
                                          "color": "RGB", "fit": "crop", "invert": "never"}
    assert described["tiny"]["input"] == {"channels": 1, "height": 28, "width": 28,
                                          "color": "grayscale", "fit": "pad", "invert": "auto"}


def test_v2_infer_takes_a_colour_model_in_either_layout(trained, make_app):
    root, weights, cache = trained
    data = load_data(root / "d", image_size=SIZE, cache_dir=cache)
    model = load_model(weights)
    x = np.ascontiguousarray(data.test_images[:5])
    expected = model.predict_proba(x)
    client = make_app(weights.parent).test_client()
    for arr in (x, x.transpose(0, 2, 3, 1)):
        r = client.post("/v2/models/mine/infer", json={"inputs": [
            {"name": "input", "shape": list(arr.shape), "datatype": "UINT8",
             "data": arr.ravel().tolist()}]})
        assert r.status_code == 200, r.get_json()
        out = {o["name"]: o for o in r.get_json()["outputs"]}
        np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (5, 2)), expected,
                                   rtol=1e-5, atol=1e-6)
    r = client.post("/v2/models/mine/infer", json={"inputs": [
        {"name": "input", "shape": [1, 16, 3, 16], "datatype": "UINT8", "data": [0] * 768}]})
    assert r.status_code == 400
    assert "[N, 3, 16, 16] (or channels-last [N, 16, 16, 3])" in r.get_json()["error"]


def test_a_weights_file_from_before_image_folders_still_loads_and_serves(tmp_path, make_app):
    import os
    import shutil

    from cnn.io import load_model
    data = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
    old = os.path.join(data, "fmnist_weights_4ad5d28.npz")
    expected = np.load(os.path.join(data, "fmnist_weights_4ad5d28_proba.npy"))
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    model = load_model(old, backend="python")
    np.testing.assert_allclose(model.predict_proba(x), expected, rtol=1e-5, atol=1e-6)
    assert upload_policy(model) == UploadPolicy((28, 28), 1, "pad", "auto")
    (tmp_path / "models").mkdir()
    shutil.copy(old, tmp_path / "models" / "old.npz")
    client = make_app(tmp_path / "models").test_client()
    described = client.get("/models/old").get_json()
    assert described["input_shape"] == [1, 28, 28] and described["input"]["fit"] == "pad"
    r = client.post("/predict?top_k=1", data=encode(x[2], "PNG"), content_type="image/png")
    assert r.status_code == 200 and r.get_json()["predictions"][0]["label"] == \
        int(model.predict(decode_image(encode(x[2], "PNG"))[None])[0])
