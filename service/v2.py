"""Open Inference Protocol (KServe V2) REST endpoints, under /v2.

Every model is one tensor in, two tensors out:

* input ``input``: ``FP32`` pixels in [0, 1] or ``UINT8`` pixels 0-255, shape
  ``[N, C, H, W]``, the model's input shape (``[N, 1, 28, 28]``, or
  ``[N, 3, 32, 32]`` for a colour model, which also takes channels-last
  ``[N, H, W, 3]``; a grayscale model also takes ``[N, H, W]``), ``data`` flat (row-major) or nested; the input's name is not
  checked (the model has one input). The model metadata declares it as
  ``FP32 [-1, C, H, W]``.
* outputs ``probabilities`` (``FP32``, ``[N, K]``) and ``labels`` (``INT64``,
  ``[N]``, the most likely class).

A model's version is its ``version`` in ``/models`` (the weights file's
``saved_at`` time); ``/versions/<v>/`` URLs must name it (else 404). ``outputs``
in a request selects tensors by name (unknown name -> 400; an empty list means
all). Health: ``/v2/health/live`` answers ``{"live": true}``,
``/v2/health/ready`` ``{"ready": bool}`` (200 or 503, as ``/ready``), model
ready ``{"name", "ready"}`` (200, or 503 for a file that failed to load, 404
for an unknown name). Errors are ``{"error": "..."}``. Unknown ``parameters``
(request, input and output level) are ignored; the binary tensor data
extension is not supported (no extensions are announced).
"""
from flask import Blueprint, current_app, jsonify, request

import cnn
from service.errors import ApiError
from service.inputs import json_value_limit, read_json, v2_tensor
from service.offload import run_blocking

bp = Blueprint("v2", __name__, url_prefix="/v2")

INPUT_NAME = "input"
OUTPUTS = ("probabilities", "labels")
PLATFORM = "cnn_npz"


def registry():
    return current_app.extensions["cnn"].registry


def resolve(name, version=None):
    served = registry().get(name)
    if version is not None and version != served.version:
        raise ApiError(404, f"model {name!r} has no version {version!r} (served version: "
                            f"{served.version!r})")
    return served


@bp.get("")
@bp.get("/")
def server_metadata():
    return jsonify({"name": "cnn", "version": cnn.__version__, "extensions": []})


@bp.get("/health/live")
def live():
    return jsonify({"live": True})


@bp.get("/health/ready")
def server_ready():
    reason = registry().not_ready_reason()
    if reason:
        return jsonify({"ready": False, "error": reason}), 503
    return jsonify({"ready": True})


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name, version=None):
    served = resolve(name, version)
    c, h, w = served.input_shape
    return jsonify({
        "name": served.name,
        "versions": [served.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32",
                     "shape": [-1, served.num_classes]},
                    {"name": "labels", "datatype": "INT64", "shape": [-1]}],
    })


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name, version=None):
    try:
        served = resolve(name, version)
    except ApiError as exc:
        if exc.status != 503:
            raise
        return jsonify({"name": name, "ready": False, "error": exc.message}), 503
    return jsonify({"name": served.name, "ready": True})


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name, version=None):
    if not request.is_json:
        raise ApiError(415, f"unsupported Content-Type {request.mimetype or '(none)'!r}: "
                            f"send the inference request as application/json")
    served = resolve(name, version)
    body = run_blocking(read_json, request,
                        json_value_limit(served, current_app.config["CNN_MAX_IMAGES"]))
    if not isinstance(body, dict):
        raise ApiError(400, "the inference request must be a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, "'id' must be a string")
    if not isinstance(body.get("parameters", {}), dict):
        raise ApiError(400, "'parameters' must be an object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "'inputs' must be a non-empty list of input tensors")
    if len(inputs) != 1:
        raise ApiError(400, f"model {served.name!r} takes one input tensor, got "
                            f"{len(inputs)}")
    wanted = list(OUTPUTS)
    if "outputs" in body:
        requested = body["outputs"]
        if not isinstance(requested, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
            raise ApiError(400, "'outputs' must be a list of objects with a 'name'")
        if not all(isinstance(o.get("parameters", {}), dict) for o in requested):
            raise ApiError(400, "output 'parameters' must be an object")
        if requested:
            wanted = []
            for o in requested:
                if o["name"] not in OUTPUTS:
                    raise ApiError(400, f"unknown output {o['name']!r} (outputs: "
                                        f"{', '.join(OUTPUTS)})")
                if o["name"] not in wanted:
                    wanted.append(o["name"])

    x = run_blocking(v2_tensor, inputs[0], served, current_app.config["CNN_MAX_IMAGES"])
    proba = served.predict_proba(x)
    labels = proba.argmax(axis=1)
    current_app.extensions["cnn"].metrics.record_predictions(
        request.url_rule.rule, served.name, served.class_names, labels.tolist())
    n = len(proba)
    tensors = {
        "probabilities": {"name": "probabilities", "shape": [n, served.num_classes],
                          "datatype": "FP32",
                          "data": proba.astype("float32").ravel().tolist()},
        "labels": {"name": "labels", "shape": [n], "datatype": "INT64",
                   "data": [int(v) for v in labels]},
    }
    response = {"model_name": served.name, "model_version": served.version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = [tensors[k] for k in wanted]
    return jsonify(response)
