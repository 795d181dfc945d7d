"""Open Inference Protocol (KServe V2) REST endpoints."""
import gzip
import json
import zlib

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


# --------------------------------------------------------------------------
# The binary tensor data extension, datatypes, classification, compression
# (by hand here; tests/service/test_tritonclient.py drives them with tritonclient).

def binary_infer(client, raw, datatype="UINT8", shape=(1, 28, 28), header=None,
                 size=None, url="/v2/models/tiny/infer", **headers):
    """POST a JSON header plus raw tensor bytes, as tritonclient sends them."""
    request = {"inputs": [{"name": "input", "shape": list(shape), "datatype": datatype,
                           "parameters": {"binary_data_size": len(raw) if size is None
                                          else size}}]}
    head = json.dumps(request).encode()
    headers.setdefault("Inference-Header-Content-Length",
                       str(len(head)) if header is None else header)
    return client.post(url, data=head + raw, headers=headers)


def split_answer(response):
    """(JSON header, raw bytes) of a binary answer."""
    assert response.mimetype == "application/octet-stream"
    n = int(response.headers["Inference-Header-Content-Length"])
    data = response.get_data()
    return json.loads(data[:n]), data[n:]


@pytest.mark.parametrize("datatype, dtype, scale", [
    ("UINT8", "u1", 1), ("UINT16", "<u2", 1), ("UINT32", "<u4", 1), ("UINT64", "<u8", 1),
    ("INT8", "i1", None), ("INT16", "<i2", 1), ("INT32", "<i4", 1), ("INT64", "<i8", 1),
    ("FP16", "<f2", 255), ("FP32", "<f4", 255), ("FP64", "<f8", 255), ("BF16", None, 255)])
@pytest.mark.parametrize("binary", [True, False])
def test_every_numeric_datatype_is_pixels(client, tiny_model, datatype, dtype, scale, binary):
    x = random_images(2, seed=30)
    if datatype == "INT8":                 # 0-127 only fits
        x = x // 2
    if datatype == "BF16":                 # values BF16 holds exactly: k/256 (k < 256)
        pixels = x.astype(np.float32) / 256
        raw = (pixels.view("<u4") >> 16).astype("<u2").tobytes()
    elif scale == 1:
        pixels = x
        raw = x.astype(dtype).tobytes()
    else:
        pixels = (x / 255.0).astype(dtype).astype(np.float32)
        raw = (x / 255.0).astype(dtype).tobytes()
    if binary:
        r = binary_infer(client, raw, datatype, shape=(2, 28, 28))
    else:
        r = client.post("/v2/models/tiny/infer", json={"inputs": [
            {"name": "input", "shape": [2, 28, 28], "datatype": datatype,
             "data": pixels.ravel().tolist()}]})
    assert r.status_code == 200, r.get_json()
    probs = np.asarray(r.get_json()["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_allclose(probs, tiny_model.predict_proba(pixels), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("datatype, dtype, value, needle", [
    ("UINT16", "<u2", 256, "UINT16 data must be integers in [0, 255] (pixel values), found 256 "
                           "at flat index 0"),
    ("INT32", "<i4", -3, "found -3"),
    ("FP32", "<f4", np.nan, "FP32 data must be finite"),
    ("FP16", "<f2", np.inf, "FP16 data must be finite"),
    ("FP64", "<f8", 1.5, "found 1.5"),
])
def test_binary_values_are_range_checked(client, datatype, dtype, value, needle):
    raw = np.full(784, value, dtype).tobytes()
    assert needle in assert_error(binary_infer(client, raw, datatype), 400)["error"]


@pytest.mark.parametrize("change, needle", [
    (dict(header="12x"), "Inference-Header-Content-Length must be a non-negative integer"),
    (dict(header="-1"), "must be a non-negative integer"),
    (dict(header="99999"), "but the body has only"),
    (dict(header="0"), "empty"),
    (dict(size=783), "binary_data_size' is 783 bytes but shape [1, 28, 28] of UINT8 "
                     "takes 784"),
    (dict(size=-1), "non-negative integer"),
    (dict(size="784"), "non-negative integer"),
    (dict(raw=bytes(783), size=784), "the body has 783 bytes after the JSON header"),
    (dict(raw=bytes(785), size=784), "the body has 785 bytes after the JSON header"),
    (dict(datatype="FP32"), "takes 3,136 (784 values x 4 bytes)"),
    (dict(shape=(2, 28, 28)), "takes 1,568"),
])
def test_binary_sizes_are_checked_against_shape_and_body(client, change, needle):
    args = {"raw": bytes(784), **change}
    raw = args.pop("raw")
    error = assert_error(binary_infer(client, raw, **args), 400)["error"]
    assert needle in error


def test_binary_data_needs_its_declaration(client):
    body = infer_body(random_images(1), shape=[1, 28, 28])
    head = json.dumps(body).encode()
    r = client.post("/v2/models/tiny/infer", data=head + bytes(784),
                    headers={"Inference-Header-Content-Length": str(len(head))})
    assert "declares no 'binary_data_size'" in assert_error(r, 400)["error"]
    body["inputs"][0]["parameters"] = {"binary_data_size": 784}
    head = json.dumps(body).encode()
    r = client.post("/v2/models/tiny/infer", data=head + bytes(784),
                    headers={"Inference-Header-Content-Length": str(len(head))})
    assert "both 'data' and 'binary_data_size'" in assert_error(r, 400)["error"]


@pytest.mark.parametrize("content_type", [None, "application/json", "application/octet-stream",
                                          "application/x-www-form-urlencoded"])
def test_infer_takes_json_with_or_without_a_content_type(client, tiny_model, content_type):
    x = random_images(1, seed=31)
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = client.post("/v2/models/tiny/infer", data=json.dumps(infer_body(x)), headers=headers)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["outputs"][1]["data"] == tiny_model.predict(x).tolist()
    r = binary_infer(client, x.tobytes(), **headers)
    assert r.status_code == 200, r.get_json()


def test_binary_outputs_are_answered_as_triton_does(client, tiny_model):
    x = random_images(3, seed=32)
    body = infer_body(x, parameters={"binary_data_output": True}, outputs=[
        {"name": "labels"}, {"name": "probabilities", "parameters": {"binary_data": False}}])
    r = client.post("/v2/models/tiny/infer", json=body)
    assert r.status_code == 200
    header, raw = split_answer(r)
    labels, probs = header["outputs"]
    assert labels == {"name": "labels", "shape": [3], "datatype": "INT64",
                      "parameters": {"binary_data_size": 24}}
    assert np.frombuffer(raw, "<i8").tolist() == tiny_model.predict(x).tolist()
    np.testing.assert_allclose(probs["data"], tiny_model.predict_proba(x).ravel(), rtol=1e-5,
                               atol=1e-7)
    # JSON only: the ordinary answer
    body["parameters"] = {}
    r = client.post("/v2/models/tiny/infer", json=body)
    assert r.mimetype == "application/json" and "Inference-Header-Content-Length" not in r.headers


def test_classification_strings(client, tiny_model):
    x = random_images(2, seed=33)
    body = infer_body(x, outputs=[{"name": "probabilities",
                                   "parameters": {"classification": 2}}])
    out = client.post("/v2/models/tiny/infer", json=body).get_json()["outputs"][0]
    proba = tiny_model.predict_proba(x)
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
    for i, (first, second) in enumerate(zip(out["data"][::2], out["data"][1::2])):
        score, index, label = first.split(":", 2)
        assert int(index) == proba[i].argmax() and label == tiny_model.class_names[int(index)]
        assert score == f"{proba[i].max():f}" and len(score.split(".")[1]) == 6
        assert float(second.split(":")[0]) <= float(score)
    # binary: Triton's serialized BYTES (4-byte little-endian length, then the bytes)
    body["outputs"][0]["parameters"]["binary_data"] = True
    header, raw = split_answer(client.post("/v2/models/tiny/infer", json=body))
    assert header["outputs"][0]["parameters"] == {"binary_data_size": len(raw)}
    strings, at = [], 0
    while at < len(raw):
        n = int.from_bytes(raw[at:at + 4], "little")
        strings.append(raw[at + 4:at + 4 + n].decode())
        at += 4 + n
    assert strings == out["data"]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_answers_are_compressed_when_asked_and_worth_it(client, tiny_model, coding):
    x = random_images(32, seed=34)
    r = client.post("/v2/models/tiny/infer", json=infer_body(x),
                    headers={"Accept-Encoding": f"br, {coding}"})
    assert r.headers["Content-Encoding"] == coding and "Accept-Encoding" in r.headers["Vary"]
    plain = (gzip.decompress if coding == "gzip" else zlib.decompress)(r.get_data())
    assert json.loads(plain)["outputs"][1]["data"] == tiny_model.predict(x).tolist()
    small = client.get("/v2", headers={"Accept-Encoding": coding})   # not worth it
    assert "Content-Encoding" not in small.headers and small.get_json()["name"] == "cnn"
    refused = client.post("/v2/models/tiny/infer", json=infer_body(x),
                          headers={"Accept-Encoding": f"{coding};q=0"})
    assert "Content-Encoding" not in refused.headers
