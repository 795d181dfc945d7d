"""GET /openapi.json: the OpenAPI 3 description of the service, kept true.

* the document is valid OpenAPI 3.0 (schemathesis validates it against the
  official JSON Schema of OpenAPI 3.0);
* it lists exactly the app's URL rules and methods (both ways), and exactly
  service.auth's open paths need no token;
* schemathesis fuzzes the app in-process (WSGI) against it: a bounded number
  of examples per operation (MAX_EXAMPLES; Hypothesis's CI profile makes them
  the same every run), no 500, every answer's status code, Content-Type,
  headers and body as documented. The app serves the tiny model as
  ``convnet``, the name the document's examples use, so the examples reach the
  200s, and a file that fails to load;
* the documented 401 (token auth on) and 503 (no model) of every operation.
"""
import collections
import io
import os
import re
import shutil

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.extra import numpy as hnp
from schemathesis import checks as st_checks

from service.auth import OPEN_PATHS

# every response as the document says (with no 500, asserted apart: schemathesis's
# not_a_server_error would also count the documented 503s)
CHECKS = [st_checks.status_code_conformance, st_checks.content_type_conformance,
          st_checks.response_schema_conformance, st_checks.response_headers_conformance]
# and the service refuses what the document says is invalid (4xx)
FUZZ_CHECKS = CHECKS + [st_checks.negative_data_rejection]
# per operation; CNN_FUZZ_EXAMPLES=500 for a longer local hunt
MAX_EXAMPLES = int(os.environ.get("CNN_FUZZ_EXAMPLES", 30))


@st.composite
def npy_files(draw):
    """Bytes of np.save'd arrays: mostly images of the served shape, some other
    shapes and dtypes, some cut short (schemathesis cannot make these itself)."""
    n = draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(28, 28), (n, 28, 28), (n, 1, 28, 28), (n, 3, 28, 28),
                                  (n, 27, 28), (0, 28, 28), (n,)]))
    dtype = draw(st.sampled_from(["u1", "f4", "f8", "i2", "?", "c8"]))
    elements = st.floats(-1, 300, width=32) if dtype[0] == "f" else None
    array = draw(hnp.arrays(np.dtype(dtype), shape, elements=elements))
    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getvalue()
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


schemathesis.openapi.media_type("application/x-npy", npy_files())
# what the fuzz sent and got, to look at after a run:
# {(operation, schemathesis phase, body media type, status): count}
STATUSES = collections.Counter()
TOKEN = "fuzz-token"


@pytest.fixture
def fuzz_models(tmp_path, tiny_weights):
    """The tiny model as ``convnet`` (the name of the document's examples) and a
    file that fails to load (``broken``: its 503s and the ``failed`` lists)."""
    folder = tmp_path / "fuzz-models"
    folder.mkdir()
    shutil.copy(tiny_weights, folder / "convnet.npz")
    (folder / "broken.npz").write_bytes(b"not a weights file")
    return folder


@pytest.fixture
def fuzz_app(make_app, fuzz_models):
    # small limits, so that generated bodies can reach the 413s
    return make_app(fuzz_models, CNN_API_TOKEN=TOKEN, CNN_MAX_IMAGES=4,
                    CNN_MAX_CONTENT_LENGTH=256 * 1024)


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def test_document_is_valid_openapi(document):
    # schemathesis checks it against the official OpenAPI 3.0 JSON Schema
    schemathesis.openapi.from_dict(document).validate()
    assert document["openapi"].startswith("3.0")
    del document["paths"]["/health"]["get"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="not valid"):
        schemathesis.openapi.from_dict(document).validate()


def _flask_routes(app):
    """{(OpenAPI path, method)} of the app's URL rules (HEAD and OPTIONS are Flask's own)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # Flask's default static route: no static files here
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_document_lists_every_route_and_no_other(app, document):
    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    routes = _flask_routes(app)
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the app does not have"


def test_every_path_parameter_is_declared(document):
    for path, item in document["paths"].items():
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)


def test_exactly_the_open_paths_need_no_token(document):
    open_paths = {path for path, item in document["paths"].items()
                  if item["get" if "get" in item else "post"].get("security") == []}
    assert open_paths == OPEN_PATHS
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for op in item.values():
            assert ("401" in op["responses"]) == (path not in open_paths), path


@pytest.fixture
def api_schema(fuzz_app):
    # every request has the token, so the fuzz reaches the views (the 401s are
    # checked apart), and half the model names and versions are the served ones
    # (the rest: 404)
    version = fuzz_app.extensions["cnn"].registry.get("convnet").version
    config = schemathesis.config.SchemathesisConfig.from_dict({
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "dictionaries": {"name": {"values": ["convnet"]}, "version": {"values": [version]}},
        "parameters": {"query.model": {"dictionary": "name", "probability": 0.5},
                       "path.name": {"dictionary": "name", "probability": 0.5},
                       "path.version": {"dictionary": "version", "probability": 0.5}},
    })
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_fuzz(case):
    response = case.call()
    STATUSES[case.operation.label, case.meta.phase.name.value, case.media_type,
             response.status_code] += 1
    assert response.status_code != 500, response.text
    case.validate_response(response, checks=FUZZ_CHECKS)


def _plain_case(operation, document, name):
    """A case of ``operation`` with the document's own example body."""
    path_parameters = {p: v for p, v in (("name", name), ("version", "v1"))
                       if "{%s}" % p in operation.path}
    if operation.method.upper() != "POST":
        return operation.Case(path_parameters=path_parameters)
    content = document["paths"][operation.path]["post"]["requestBody"]["content"]
    json_body = content["application/json"]
    body = json_body.get("example") or json_body["examples"]["pixels"]["value"]
    return operation.Case(path_parameters=path_parameters, body=body,
                          media_type="application/json")


def _documented_answers(app, name):
    """{operation: status} of one plain request (no token) to every operation,
    each answer checked against the document."""
    api = schemathesis.openapi.from_wsgi("/openapi.json", app)
    document = app.test_client().get("/openapi.json").get_json()
    statuses = {}
    for result in api.get_all_operations():
        operation = result.ok()
        case = _plain_case(operation, document, name)
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        statuses[operation.label] = response.status_code
    return statuses


def test_without_the_token_secured_operations_answer_the_documented_401(fuzz_app):
    statuses = _documented_answers(fuzz_app, "convnet")
    assert {label for label, status in statuses.items() if status != 401} == {
        "GET /health", "GET /ready", "GET /v2/health/live", "GET /v2/health/ready"}
    # (schemathesis leaves out the document's own operation)
    assert fuzz_app.test_client().get("/openapi.json").status_code == 200


def test_the_documented_503s_when_the_model_failed_to_load(make_app, tmp_path):
    folder = tmp_path / "only-broken"
    folder.mkdir()
    (folder / "broken.npz").write_bytes(b"not a weights file")
    statuses = _documented_answers(make_app(folder), "broken")
    model_free = {"GET /", "GET /health", "GET /metrics", "GET /models", "GET /v2",
                  "GET /v2/", "GET /v2/health/live", "POST /v2/repository/index",
                  "POST /v2/repository/models/{name}/unload"}   # an unload needs no model
    assert {label for label, status in statuses.items() if status == 503} \
        == set(statuses) - model_free, statuses


def test_v2_output_parameters_must_be_an_object(client):
    # found by the fuzz (negative data): request and input `parameters` were
    # checked, an output's were not; the document says object for all three
    body = {"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "UINT8",
                        "data": [0] * 784}],
            "outputs": [{"name": "labels", "parameters": 5}]}
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 400
    assert "output 'parameters' must be an object" in response.get_json()["error"]
    body["outputs"][0]["parameters"] = {"binary_data": False}  # unknown: ignored
    assert client.post("/v2/models/tiny/infer", json=body).status_code == 200


def test_a_partial_answer_conforms_to_the_document(client):
    import io as _io

    import jsonschema

    from tests.service.helpers import png_bytes, random_images
    document = client.get("/openapi.json").get_json()
    body = {"a": (_io.BytesIO(png_bytes(random_images(1)[0])), "a.png"),
            "b": (_io.BytesIO(b"not an image"), "b.png")}
    r = client.post("/predict?partial=true", data=body, content_type="multipart/form-data")
    answer = r.get_json()
    assert r.status_code == 200 and answer["partial"] is True and len(answer["errors"]) == 1
    jsonschema.validate(answer, {"$ref": "#/components/schemas/Predictions",
                                 "components": document["components"]})
