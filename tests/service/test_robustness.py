"""No input makes the service answer 500: random JSON, bytes and damaged images."""
import io

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.service.helpers import png_bytes, random_images

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30)


def check(response, allowed=(200, 400, 404, 413, 415)):
    assert response.status_code in allowed, (response.status_code, response.get_data())
    body = response.get_json()
    assert isinstance(body, dict)
    if response.status_code != 200:
        assert isinstance(body.get("error"), str)


@FUZZ
@given(value=json_values, key=st.sampled_from(["pixels", "images", None]))
def test_predict_random_json(client, value, key):
    body = value if key is None else {key: value}
    check(client.post("/predict", json=body))


@FUZZ
@given(shape=st.lists(st.integers(-2, 40), max_size=5) | json_values,
       datatype=st.sampled_from(["FP32", "UINT8", "INT64", 3, None]),
       data=json_values, outputs=st.none() | json_values, req_id=st.none() | json_values)
def test_v2_random_tensors(client, shape, datatype, data, outputs, req_id):
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}
    if outputs is not None:
        body["outputs"] = outputs
    if req_id is not None:
        body["id"] = req_id
    check(client.post("/v2/models/tiny/infer", json=body))


@FUZZ
@given(data=st.binary(max_size=2000),
       content_type=st.sampled_from(["application/json", "image/png", "text/plain",
                                     "multipart/form-data", "multipart/form-data; boundary=x",
                                     "application/x-www-form-urlencoded"]))
def test_random_bytes(client, data, content_type):
    check(client.post("/predict", data=data, content_type=content_type))
    check(client.post("/v2/models/tiny/infer", data=data, content_type=content_type))


_PNG = png_bytes(random_images(1, seed=30, size=(40, 40))[0])


@FUZZ
@given(positions=st.lists(st.integers(0, len(_PNG) - 1), min_size=1, max_size=8),
       values=st.lists(st.integers(0, 255), min_size=8, max_size=8),
       cut=st.integers(1, len(_PNG)))
def test_damaged_png(client, positions, values, cut):
    data = bytearray(_PNG)
    for p, v in zip(positions, values):
        data[p] = v
    data = bytes(data[:cut])
    r = client.post("/predict", data={"images": [(io.BytesIO(data), "damaged.png")]},
                    content_type="multipart/form-data")
    check(r, allowed=(200, 400))
    if r.status_code == 400:
        assert r.get_json()["errors"][0]["name"] == "damaged.png"


def test_extreme_values(client):
    huge = {"pixels": [[10**400] * 28] * 28}
    check(client.post("/predict", json=huge))
    deep = {"pixels": np.zeros((1,) * 60 + (28, 28)).tolist()}
    check(client.post("/predict", json=deep))
    v2 = {"inputs": [{"name": "input", "shape": [10**20, 28, 28], "datatype": "UINT8",
                      "data": [0]}]}
    check(client.post("/v2/models/tiny/infer", json=v2))
    v2["inputs"][0]["shape"] = [1, 28, 28]
    v2["inputs"][0]["data"] = [10**400] * 784
    check(client.post("/v2/models/tiny/infer", json=v2))


def _pixel_json(n_images, value="0"):
    row = "[" + ",".join([value] * 28) + "]"
    image = "[" + ",".join([row] * 28) + "]"
    return '{"pixels": [' + ",".join([image] * n_images) + "]}"


def test_json_bodies_of_more_values_than_a_batch_are_refused_before_parsing(client,
                                                                             monkeypatch):
    import service.inputs
    parsed = []
    real_loads = service.inputs.json.loads
    monkeypatch.setattr(service.inputs.json, "loads",
                        lambda data, *a, **k: parsed.append(len(data)) or real_loads(data))
    # a full batch (256 images, the default CNN_MAX_IMAGES) is parsed and classified
    ok = client.post("/predict", data=_pixel_json(256), content_type="application/json")
    assert ok.status_code == 200 and len(ok.get_json()["predictions"]) == 256
    assert max(parsed) >= 256 * 784 * 2   # (json.loads is the json module's, shared)
    # a body of many more values is refused from a comma count, never parsed
    big = _pixel_json(2000)
    r = client.post("/predict", data=big, content_type="application/json")
    assert r.status_code == 413 and "split the batch" in r.get_json()["error"]
    data = ",".join(["0"] * 1_000_000)
    v2 = ('{"inputs": [{"name": "input", "shape": [256, 1, 28, 28], "datatype": "UINT8", '
          '"data": [%s]}]}' % data)
    r = client.post("/v2/models/tiny/infer", data=v2, content_type="application/json")
    assert r.status_code == 413 and "values" in r.get_json()["error"]
    assert max(parsed) < len(big) / 4 and max(parsed) < len(v2) / 4   # neither was parsed
