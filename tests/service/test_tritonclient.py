"""/v2 driven by Triton's own HTTP client, ``tritonclient.http``, unchanged.

The app serves ``tiny`` (grayscale 28x28) and ``col`` (colour 8x8) twice:
in-process behind werkzeug's threaded server on loopback (fast, for the
matrix of cases) and once under real gunicorn (tests/service/servers.py) for
one whole session. Every answer is compared with ``cnn.load_model(...).predict_proba``
on the same pixels.
"""
import contextlib
import shutil
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient
from threadpoolctl import ThreadpoolController
from tritonclient.utils import InferenceServerException
from werkzeug.serving import make_server

from cnn.io import load_model
from tests.service import servers
from tests.service.helpers import random_images, save_colour_model

COLOUR_CLASSES = ["red thing", "green thing", "blue thing"]


@pytest.fixture(scope="module")
def triton_models(tmp_path_factory, tiny_weights):
    folder = tmp_path_factory.mktemp("triton-models")
    shutil.copy(tiny_weights, folder / "tiny.npz")
    save_colour_model(folder, "col", (8, 8), COLOUR_CLASSES,
                      {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]})
    return folder


@pytest.fixture(scope="module")
def reference(triton_models):
    return {name: load_model(triton_models / f"{name}.npz", threads=1)
            for name in ("tiny", "col")}


@pytest.fixture(scope="module")
def in_process_url(triton_models):
    """host:port of the app in this process (werkzeug's threaded server, loopback)."""
    from service import create_app
    blas = ThreadpoolController()
    saved = [(lib, lib.get_num_threads()) for lib in blas.lib_controllers]
    app = create_app({"TESTING": True, "CNN_MODEL_DIR": str(triton_models),
                      "CNN_THREADS": 1, "CNN_RELOAD_INTERVAL": 0})
    for lib, n in saved:   # create_app caps BLAS process-wide: give it back
        lib.set_num_threads(n)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@contextlib.contextmanager
def triton(url):
    client = httpclient.InferenceServerClient(url, network_timeout=30)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client(in_process_url):
    with triton(in_process_url) as c:
        yield c


def make_input(x, datatype="UINT8", binary=True, name="input"):
    tensor = httpclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def top_strings(proba, k, class_names):
    """Triton's classification strings of each row: "score:index:label", best first."""
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [[f"{proba[i, j]:f}:{j}:{class_names[j]}" for j in row]
            for i, row in enumerate(order)]


def test_health_and_metadata(client, reference):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "cnn"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    tiny = client.get_model_metadata("tiny")
    assert tiny["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert tiny["outputs"][0] == {"name": "probabilities", "datatype": "FP32",
                                  "shape": [-1, 10]}
    col = client.get_model_metadata("col")
    assert col["inputs"][0]["shape"] == [-1, 3, 8, 8]
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", tiny["versions"][0])
    assert not client.is_model_ready("nope")


def test_model_config(client, reference):
    """get_model_config: what a Triton client reads to size its batches."""
    tiny = client.get_model_config("tiny")
    assert tiny["name"] == "tiny" and tiny["max_batch_size"] > 0
    assert tiny["input"] == [{"name": "input", "data_type": "TYPE_FP32",
                              "format": "FORMAT_NCHW", "dims": [1, 28, 28]}]
    assert tiny["output"][0] == {"name": "probabilities", "data_type": "TYPE_FP32",
                                 "dims": [10]}
    assert tiny["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    col = client.get_model_config("col", client.get_model_metadata("col")["versions"][0])
    assert col["input"][0]["dims"] == [3, 8, 8] and col["output"][0]["dims"] == [3]
    with pytest.raises(InferenceServerException, match="nope"):
        client.get_model_config("nope")


def test_model_config_without_batching(make_app, models_dir):
    app = make_app(models_dir, CNN_BATCHING=False, CNN_MAX_IMAGES=16)
    answer = app.test_client().get("/v2/models/tiny/config")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["max_batch_size"] == 16
    assert "dynamic_batching" not in answer.get_json()


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_infer_json_and_binary(client, reference, binary_in, binary_out, datatype):
    x = random_images(3, seed=40)[:, None]
    data = x if datatype == "UINT8" else (x / np.float32(255)).astype(np.float32)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary_out)
               for name in ("probabilities", "labels")]
    result = client.infer("tiny", [make_input(data, datatype, binary_in)], outputs=outputs,
                          request_id="r1")
    expected = reference["tiny"].predict_proba(data)
    proba = result.as_numpy("probabilities")
    assert proba.dtype == np.float32 and proba.shape == (3, 10)
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-7)
    assert result.as_numpy("labels").tolist() == expected.argmax(1).tolist()
    response = result.get_response()
    assert response["id"] == "r1" and response["model_name"] == "tiny"
    assert ("binary_data_size" in str(response["outputs"][0])) == binary_out


def test_infer_without_outputs_answers_every_output_in_binary(client, reference):
    # tritonclient then asks for binary_data_output: true
    x = random_images(2, seed=41)
    result = client.infer("tiny", [make_input(x)])
    assert [o["parameters"] for o in result.get_response()["outputs"]] == [
        {"binary_data_size": 2 * 10 * 4}, {"binary_data_size": 2 * 8}]
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               reference["tiny"].predict_proba(x), rtol=1e-5, atol=1e-7)


def test_requested_outputs(client, reference):
    x = random_images(2, seed=42)
    result = client.infer("tiny", [make_input(x)],
                          outputs=[httpclient.InferRequestedOutput("labels")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["labels"]
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("labels").tolist() == reference["tiny"].predict(x).tolist()


@pytest.mark.parametrize("binary_out", [True, False])
def test_classification(client, reference, binary_out):
    x = random_images(4, seed=43)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary_out,
                                          class_count=3)
    result = client.infer("tiny", [make_input(x)], outputs=[out])
    got = result.as_numpy("probabilities")
    assert got.shape == (4, 3)
    model = reference["tiny"]
    expected = top_strings(model.predict_proba(x), 3, model.class_names)
    assert [[s.decode() if isinstance(s, bytes) else s for s in row] for row in got] \
        == expected
    # as Triton: more classes than the model has are capped
    many = httpclient.InferRequestedOutput("probabilities", class_count=50)
    assert client.infer("tiny", [make_input(x)], outputs=[many]).as_numpy(
        "probabilities").shape == (4, 10)


def test_async_infer(client, reference):
    batches = [random_images(n, seed=44 + n) for n in (1, 2, 3)]
    pending = [client.async_infer("tiny", [make_input(x)]) for x in batches]
    for x, request in zip(batches, pending):
        np.testing.assert_allclose(request.get_result(timeout=30).as_numpy("probabilities"),
                                   reference["tiny"].predict_proba(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("request_coding", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_coding", [None, "gzip", "deflate"])
def test_compressed_requests_and_answers(client, reference, request_coding,
                                         response_coding):
    x = random_images(16, seed=45)
    result = client.infer("tiny", [make_input(x, binary=False)],
                          outputs=[httpclient.InferRequestedOutput("probabilities",
                                                                   binary_data=False)],
                          request_compression_algorithm=request_coding,
                          response_compression_algorithm=response_coding)
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               reference["tiny"].predict_proba(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layout", ["channels-first", "channels-last"])
def test_a_colour_model(client, reference, layout):
    x = np.random.default_rng(46).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    sent = x if layout == "channels-first" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = httpclient.InferRequestedOutput("probabilities", class_count=2)
    result = client.infer("col", [make_input(sent)],
                          outputs=[out, httpclient.InferRequestedOutput("labels")])
    model = reference["col"]
    assert [[s.decode() for s in row] for row in result.as_numpy("probabilities")] \
        == top_strings(model.predict_proba(x), 2, COLOUR_CLASSES)
    assert result.as_numpy("labels").tolist() == model.predict(x).tolist()


@pytest.mark.parametrize("datatype, dtype", [("INT64", np.int64), ("UINT16", np.uint16),
                                             ("FP64", np.float64), ("FP16", np.float16)])
def test_other_numeric_datatypes(client, reference, datatype, dtype):
    x = random_images(2, seed=47)
    integers = np.dtype(dtype).kind in "iu"      # 0-255, else 0-1
    data = x.astype(dtype) if integers else (x / 255).astype(dtype)
    result = client.infer("tiny", [make_input(data, datatype)])
    expected = reference["tiny"].predict_proba(x if integers else data.astype(np.float32))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5,
                               atol=1e-7)


def expect_error(call, status, *needles):
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == str(status), info.value
    for needle in needles:
        assert needle in info.value.message(), info.value.message()


@pytest.mark.parametrize("binary", [True, False])
def test_errors_carry_the_services_message(client, binary):
    x = random_images(1, seed=48)
    expect_error(lambda: client.infer("nope", [make_input(x, binary=binary)]), 404, "nope")
    wide = np.zeros((1, 28, 27), np.uint8)
    expect_error(lambda: client.infer("tiny", [make_input(wide, binary=binary)]), 400,
                 "input shape must be [N, 1, 28, 28] or [N, 28, 28], got [1, 28, 27]")
    strings = np.array([[b"abc"]], dtype=np.object_)
    expect_error(lambda: client.infer("tiny", [make_input(strings, "BYTES", binary)]), 400,
                 "datatype BYTES is not accepted")
    flags = np.zeros((1, 28, 28), bool)
    expect_error(lambda: client.infer("tiny", [make_input(flags, "BOOL", binary)]), 400,
                 "datatype BOOL is not accepted")
    bright = np.full((1, 28, 28), 2.0, np.float32)
    expect_error(lambda: client.infer("tiny", [make_input(bright, "FP32", binary)]), 400,
                 "FP32 data must be finite numbers in [0, 1]")
    expect_error(lambda: client.infer("tiny", [make_input(x, binary=binary)], outputs=[
        httpclient.InferRequestedOutput("scores")]), 400, "unknown output 'scores'")


def test_a_session_against_gunicorn(triton_models, reference, tmp_path):
    """One session of every kind of call against real gunicorn workers."""
    x = random_images(4, seed=49)
    tiny = reference["tiny"]
    with servers.gunicorn(triton_models, tmp_path, CNN_WORKERS="2") as info, \
            triton(f"127.0.0.1:{info['port']}") as client:
        assert client.is_server_live() and client.is_server_ready()
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        assert client.get_model_metadata("col")["inputs"][0]["shape"] == [-1, 3, 8, 8]
        json_result = client.infer("tiny", [make_input(x, binary=False)], outputs=[
            httpclient.InferRequestedOutput("probabilities", binary_data=False)])
        binary_result = client.infer("tiny", [make_input(x)],
                                     request_compression_algorithm="gzip",
                                     response_compression_algorithm="gzip")
        for result in (json_result, binary_result):
            np.testing.assert_allclose(result.as_numpy("probabilities"),
                                       tiny.predict_proba(x), rtol=1e-5, atol=1e-7)
        top = client.infer("tiny", [make_input(x)], outputs=[
            httpclient.InferRequestedOutput("probabilities", class_count=2)])
        assert [[s.decode() for s in row] for row in top.as_numpy("probabilities")] \
            == top_strings(tiny.predict_proba(x), 2, tiny.class_names)
        pending = [client.async_infer("tiny", [make_input(x[i:i + 1])]) for i in range(4)]
        assert [p.get_result(timeout=30).as_numpy("labels")[0] for p in pending] \
            == tiny.predict(x).tolist()
        expect_error(lambda: client.infer("nope", [make_input(x)]), 404, "nope")


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_binary_answers_parse_with_the_clients_reader(make_app, models_dir,
                                                                 tiny_model, coding):
    # the header length counts the JSON before compression, as Triton's does
    client = make_app(models_dir).test_client()
    x = random_images(64, seed=50)
    body = {"inputs": [{"name": "input", "shape": [64, 28, 28], "datatype": "UINT8",
                        "data": x.ravel().tolist()}],
            "parameters": {"binary_data_output": True}}
    r = client.post("/v2/models/tiny/infer", json=body, headers={"Accept-Encoding": coding})
    assert r.headers["Content-Encoding"] == coding
    assert r.mimetype == "application/octet-stream"
    result = httpclient.InferResult.from_response_body(
        r.get_data(), header_length=int(r.headers["Inference-Header-Content-Length"]),
        content_encoding=coding)
    np.testing.assert_allclose(result.as_numpy("probabilities"), tiny_model.predict_proba(x),
                               rtol=1e-5, atol=1e-7)
    assert result.as_numpy("labels").tolist() == tiny_model.predict(x).tolist()
