"""Open Inference Protocol (KServe V2) REST endpoints."""
import numpy as np
import pytest

import cnn
from tests.service.helpers import random_images


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def infer_body(x, datatype="UINT8", shape=None, nested=False, **extra):
    x = np.asarray(x)
    if datatype == "FP32":
        x = x / 255.0
    data = x.tolist() if nested else x.ravel().tolist()
    tensor = {"name": "input", "shape": list(shape or x.shape), "datatype": datatype,
              "data": data}
    return {"inputs": [tensor], **extra}


def test_server_metadata_and_health(app, client):
    body = client.get("/v2").get_json()
    # model_repository is announced by its endpoints' presence
    repository = any(r.rule == "/v2/repository/index" for r in app.url_map.iter_rules())
    assert body == {"name": "cnn", "version": cnn.__version__,
                    "extensions": ["binary_tensor_data", "classification",
                                   *(["model_repository"] if repository else [])]}
    assert client.get("/v2/").status_code == 200
    assert client.get("/v2/health/live").get_json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.get_json() == {"ready": True}


def test_model_metadata(client, tiny_model):
    body = client.get("/v2/models/tiny").get_json()
    version = tiny_model.meta["saved_at"]
    assert body == {
        "name": "tiny", "versions": [version], "platform": "cnn_npz",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "labels", "datatype": "INT64", "shape": [-1]}]}
    assert client.get(f"/v2/models/tiny/versions/{version}").get_json() == body
    assert_error(client.get("/v2/models/tiny/versions/7"), 404)
    assert_error(client.get("/v2/models/nope"), 404)


def test_model_ready(make_app, models_dir, tiny_model):
    (models_dir / "broken.npz").write_bytes(b"garbage")
    client = make_app(models_dir).test_client()
    assert client.get("/v2/models/tiny/ready").get_json() == {"name": "tiny", "ready": True}
    version = tiny_model.meta["saved_at"]
    assert client.get(f"/v2/models/tiny/versions/{version}/ready").status_code == 200
    r = client.get("/v2/models/broken/ready")
    assert r.status_code == 503
    assert r.get_json()["ready"] is False and r.get_json()["name"] == "broken"
    assert_error(client.get("/v2/models/nope/ready"), 404)


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("nested", [False, True])
def test_infer(client, tiny_model, datatype, rank, nested):
    x = random_images(3, seed=20)
    shape = [3, 28, 28] if rank == 3 else [3, 1, 28, 28]
    arr = x if rank == 3 else x[:, None]
    r = client.post("/v2/models/tiny/infer",
                    json=infer_body(arr, datatype, shape=shape, nested=nested))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["model_name"] == "tiny"
    assert body["model_version"] == tiny_model.meta["saved_at"]
    assert "id" not in body
    probs, labels = body["outputs"]
    assert probs["name"] == "probabilities" and probs["datatype"] == "FP32"
    assert probs["shape"] == [3, 10] and len(probs["data"]) == 30
    assert labels == {"name": "labels", "shape": [3], "datatype": "INT64",
                      "data": tiny_model.predict(x).tolist()}
    expected = tiny_model.predict_proba(x if datatype == "UINT8" else x / 255.0)
    np.testing.assert_allclose(np.array(probs["data"]).reshape(3, 10), expected, rtol=1e-5,
                               atol=1e-7)


def test_infer_id_outputs_parameters_and_version(client, tiny_model):
    x = random_images(2, seed=21)
    body = infer_body(x, id="req-42", parameters={"whatever": 1, "binary_data_output": False},
                      outputs=[{"name": "labels", "parameters": {"foo": "bar"}}])
    body["inputs"][0]["parameters"] = {"unknown": True}
    body["unknown_top_level"] = 1
    version = tiny_model.meta["saved_at"]
    for url in ("/v2/models/tiny/infer", f"/v2/models/tiny/versions/{version}/infer"):
        r = client.post(url, json=body)
        assert r.status_code == 200, r.get_json()
        answer = r.get_json()
        assert answer["id"] == "req-42"
        assert [o["name"] for o in answer["outputs"]] == ["labels"]
        assert answer["outputs"][0]["data"] == tiny_model.predict(x).tolist()
    body["outputs"] = [{"name": "probabilities"}]
    answer = client.post("/v2/models/tiny/infer", json=body).get_json()
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    body["outputs"] = [{"name": "scores"}]
    assert "scores" in assert_error(client.post("/v2/models/tiny/infer", json=body),
                                    400)["error"]
    assert_error(client.post("/v2/models/tiny/versions/1/infer", json=infer_body(x)), 404)


def test_infer_unknown_model(client):
    assert_error(client.post("/v2/models/nope/infer", json=infer_body(random_images(1))), 404)


@pytest.mark.parametrize("mutate, needle", [
    (lambda b: b["inputs"][0].update(shape=[2, 1, 28, 28]), "holds 1568 values"),
    (lambda b: b["inputs"][0].update(data=b["inputs"][0]["data"][:-1]), "has 783"),
    (lambda b: b["inputs"][0].update(shape=[1, 784]), "shape must be"),
    (lambda b: b["inputs"][0].update(shape=[1, 3, 28, 28]), "shape must be"),
    (lambda b: b["inputs"][0].update(shape=[1, 28, 28.0]), "list of integers"),
    (lambda b: b["inputs"][0].update(shape="1,28,28"), "list of integers"),
    (lambda b: b["inputs"][0].update(shape=[0, 28, 28], data=[]), "empty batch"),
    (lambda b: b["inputs"][0].update(shape=[-1, 28, 28]), "negative"),
    (lambda b: b["inputs"][0].update(datatype="BOOL"), "datatype BOOL is not accepted"),
    (lambda b: b["inputs"][0].update(datatype="BYTES"), "datatype BYTES is not accepted"),
    (lambda b: b["inputs"][0].update(datatype="FP64"), "FP64 data must be finite"),
    (lambda b: b["inputs"][0].update(datatype="INT8", data=[-1] + b["inputs"][0]["data"][1:]),
     "INT8 data must be integers in [0, 255]"),
    (lambda b: b["inputs"][0].update(datatype="fp32"), "datatype"),
    (lambda b: b["inputs"][0].update(data=[300] + b["inputs"][0]["data"][1:]), "UINT8"),
    (lambda b: b["inputs"][0].update(data=[1.5] + b["inputs"][0]["data"][1:]), "UINT8"),
    (lambda b: b["inputs"][0].update(datatype="FP32"), "FP32 data must be"),  # 0-255 as FP32
    (lambda b: b["inputs"][0].update(data=["1"] + b["inputs"][0]["data"][1:]), "numbers"),
    (lambda b: b["inputs"][0].update(data=[True] + b["inputs"][0]["data"][1:]), "numbers"),
    (lambda b: b["inputs"][0].update(data=[None] + b["inputs"][0]["data"][1:]), "numbers"),
    (lambda b: b["inputs"][0].update(data=[[0] * 28] * 27 + [[0] * 27]), "rectangular"),
    (lambda b: b["inputs"][0].update(data="abc"), "must be a list"),
    (lambda b: b["inputs"][0].pop("data"), "missing 'data'"),
    (lambda b: b["inputs"][0].pop("shape"), "missing 'shape'"),
    (lambda b: b["inputs"][0].update(name=5), "name"),
    (lambda b: b["inputs"][0].update(parameters=[]), "parameters"),
    (lambda b: b["inputs"][0].update(parameters={"binary_data_size": 10}),
     "needs the Inference-Header-Content-Length header"),
    (lambda b: b["inputs"][0].update(parameters={"shared_memory_region": "r"}),
     "shared memory"),
    (lambda b: b.update(parameters={"binary_data_output": "yes"}), "'binary_data_output'"),
    (lambda b: b.update(outputs=[{"name": "labels", "parameters": {"classification": 2}}]),
     "cannot be classified"),
    (lambda b: b.update(outputs=[{"name": "probabilities",
                                  "parameters": {"classification": -1}}]), "classification"),
    (lambda b: b.update(outputs=[{"name": "probabilities",
                                  "parameters": {"binary_data": 1}}]), "'binary_data'"),
    (lambda b: b.update(inputs=[]), "non-empty"),
    (lambda b: b.update(inputs=b["inputs"] * 2), "one input"),
    (lambda b: b.update(inputs=["x"]), "object"),
    (lambda b: b.update(id=42), "'id'"),
    (lambda b: b.update(parameters=[1]), "'parameters'"),
    (lambda b: b.update(outputs={"name": "labels"}), "'outputs'"),
    (lambda b: b.update(outputs=[{"nom": "labels"}]), "'outputs'"),
])
def test_infer_bad_requests(client, mutate, needle):
    body = infer_body(random_images(1, seed=22), shape=[1, 28, 28])
    mutate(body)
    assert needle in assert_error(client.post("/v2/models/tiny/infer", json=body),
                                  400)["error"]


def test_infer_fp32_nan(client):
    data = ",".join(["NaN"] + ["0.5"] * 783)
    raw = ('{"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "FP32", '
           '"data": [' + data + ']}]}')
    r = client.post("/v2/models/tiny/infer", data=raw, content_type="application/json")
    assert "finite" in assert_error(r, 400)["error"]


def test_infer_limits_and_content_type(make_app, models_dir):
    client = make_app(models_dir, CNN_MAX_IMAGES=2).test_client()
    assert_error(client.post("/v2/models/tiny/infer", json=infer_body(random_images(3))), 413)
    assert_error(client.post("/v2/models/tiny/infer", data=b"x", content_type="text/plain"),
                 415)
    assert_error(client.post("/v2/models/tiny/infer", data=b"{", content_type="application/json"),
                 400)
    assert_error(client.get("/v2/models/tiny/infer"), 405)
    assert_error(client.post("/v2/health/live"), 405)


def test_a_colour_model_is_served_through_v2(make_app, tmp_path):
    import numpy as np
    from cnn.io import load_model
    from tests.service.helpers import save_colour_model
    folder = tmp_path / "colour"
    save_colour_model(folder, "col", (8, 8), ["a", "b", "c"],
                      {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]})
    client = make_app(folder).test_client()
    meta = client.get("/v2/models/col").get_json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 8, 8]
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    r = client.post("/v2/models/col/infer", json={"inputs": [
        {"name": "input", "shape": [4, 3, 8, 8], "datatype": "UINT8",
         "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.get_json()
    proba = np.asarray(r.get_json()["outputs"][0]["data"], np.float32).reshape(4, 3)
    assert np.allclose(proba, load_model(folder / "col.npz").predict_proba(x), atol=1e-6)
