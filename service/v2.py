"""Open Inference Protocol (KServe V2) REST endpoints, under /v2, as Triton's
clients speak it (``tritonclient.http`` works unchanged; tests/service/test_tritonclient.py).

Every model is one tensor in, two tensors out:

* input ``input``: pixels of shape ``[N, C, H, W]``, the model's input shape
  (``[N, 1, 28, 28]``, or ``[N, 3, 32, 32]`` for a colour model, which also
  takes channels-last ``[N, H, W, 3]``; a grayscale model also takes
  ``[N, H, W]``). Any integer datatype (``UINT8``, ``INT64``, ...) holds
  0-255, any float datatype (``FP32``, ``FP16``, ``FP64``, ``BF16``) 0-1;
  values are range-checked; ``BOOL`` and ``BYTES`` are 400. ``data`` is flat
  (row-major) or nested, or the input is binary tensor data (below). The
  input's name is not checked (the model has one input). The model metadata
  declares it as ``FP32 [-1, C, H, W]``.
* outputs ``probabilities`` (``FP32``, ``[N, K]``) and ``labels`` (``INT64``,
  ``[N]``, the most likely class).

Extensions (listed by ``GET /v2``, see :func:`server_extensions`):

* ``binary_tensor_data``: with an ``Inference-Header-Content-Length: L``
  header, the body is L bytes of JSON then the inputs' raw little-endian bytes,
  each input saying how many with ``parameters.binary_data_size`` (checked
  against its shape and datatype and against the body: 400). An output with
  ``parameters.binary_data: true`` (default: the request's
  ``parameters.binary_data_output``, else false) is answered as raw bytes:
  the answer is then the JSON header (the output has ``parameters:
  {"binary_data_size": n}`` instead of ``data``) followed by the outputs'
  bytes in order, with ``Content-Type: application/octet-stream`` and
  ``Inference-Header-Content-Length``, as Triton answers.
* ``classification``: an output requested with ``parameters:
  {"classification": K}`` answers, instead of its values, the top K classes
  of each image (K capped at the number of classes, as Triton does) as
  ``BYTES`` ``[N, K]`` strings ``"score:index:label"``, the score printed as
  Triton prints it (C++ ``std::to_string``: six decimals). Only
  ``probabilities`` can be classified.

The infer body is JSON with or without a Content-Type (tritonclient sends
none; curl's default form type and ``application/octet-stream`` are taken
too); it may be gzip- or deflate-compressed (``Content-Encoding``, decoded by
service.body within ``CNN_MAX_CONTENT_LENGTH``). Every answer of this
blueprint is compressed when the client accepts gzip or deflate
(``Accept-Encoding``) and it is worth it (:func:`compress`). Shared memory
parameters are 400 (not supported); other unknown ``parameters`` (request,
input and output level) are ignored.

A model's version is its ``version`` in ``/models`` (the weights file's
``saved_at`` time); ``/versions/<v>/`` URLs must name it (else 404). ``outputs``
in a request selects tensors by name (unknown name -> 400; an empty list means
all). ``/config`` answers Triton's model configuration (:func:`model_config`).
Health: ``/v2/health/live`` answers ``{"live": true}``,
``/v2/health/ready`` ``{"ready": bool}`` (200 or 503, as ``/ready``), model
ready ``{"name", "ready"}`` (200, or 503 for a file that failed to load, 404
for an unknown name). Errors are ``{"error": "..."}`` (tritonclient raises
them as ``InferenceServerException`` with that message).
"""
import gzip
import struct
import zlib

import numpy as np
from flask import Blueprint, current_app, jsonify, request

import cnn
from service.errors import ApiError
from service.inputs import json_value_limit
from service.offload import run_blocking
from service.v2_tensors import HEADER_LENGTH, v2_request, v2_tensor

bp = Blueprint("v2", __name__, url_prefix="/v2")

INPUT_NAME = "input"
OUTPUTS = ("probabilities", "labels")
PLATFORM = "cnn_npz"
# None: no Content-Type (tritonclient); form-urlencoded: curl -d, as in Triton's docs
INFER_MIMETYPES = ("", "application/json", "application/octet-stream",
                   "application/x-www-form-urlencoded")
# The protocol extensions implemented here, by Triton's names.
EXTENSIONS = ("binary_tensor_data", "classification")


def registry():
    return current_app.extensions["cnn"].registry


def resolve(name, version=None):
    """The served model ``name`` at ``version`` (None: the highest); service.models."""
    return registry().get(name, version)


def server_extensions():
    """EXTENSIONS, and ``model_repository`` once the app has Triton's model
    repository endpoints (found by their URL, so whoever adds them needs no
    change here)."""
    extensions = list(EXTENSIONS)
    if any(rule.rule == "/v2/repository/index" for rule in current_app.url_map.iter_rules()):
        extensions.append("model_repository")
    return extensions


@bp.get("")
@bp.get("/")
def server_metadata():
    return jsonify({"name": "cnn", "version": cnn.__version__,
                    "extensions": server_extensions()})


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
        "versions": registry().versions(served.name),
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32",
                     "shape": [-1, served.num_classes]},
                    {"name": "labels", "datatype": "INT64", "shape": [-1]}],
    })


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
def model_config(name, version=None):
    """Triton's model configuration (``tritonclient``'s ``get_model_config``), in
    the JSON form of its ``ModelConfig``: what a client reads to size its
    batches (``max_batch_size``: CNN_MAX_IMAGES, so ``dims`` leave out the batch
    axis, as Triton's do) and whether the server batches dynamically."""
    served = resolve(name, version)
    config = current_app.config
    answer = {
        "name": served.name,
        "platform": PLATFORM,
        "backend": "cnn",
        # every version in the folder is served side by side (service.models)
        "version_policy": {"all": {}},
        "max_batch_size": config["CNN_MAX_IMAGES"],
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                   "dims": list(served.input_shape)}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32",
                    "dims": [served.num_classes]},
                   # one label per image: Triton writes a per-image scalar as
                   # dims [1] reshaped to []
                   {"name": "labels", "data_type": "TYPE_INT64", "dims": [1],
                    "reshape": {"shape": []}}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }
    if config.get("CNN_BATCHING", True):
        answer["dynamic_batching"] = {
            "max_queue_delay_microseconds": config.get("CNN_BATCH_DELAY_US", 0),
            "preferred_batch_size": [config.get("CNN_BATCH_MAX_SIZE")
                                     or min(64, config["CNN_MAX_IMAGES"])]}
    return jsonify(answer)


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
    if request.mimetype not in INFER_MIMETYPES:
        raise ApiError(415, f"unsupported Content-Type {request.mimetype!r}: send the "
                            f"inference request as JSON (application/json or no "
                            f"Content-Type), binary tensor data as application/octet-stream")
    served = resolve(name, version)
    max_images = current_app.config["CNN_MAX_IMAGES"]
    body, binary = run_blocking(v2_request, request.get_data(cache=True),
                                request.headers.get(HEADER_LENGTH),
                                json_value_limit(served, max_images))
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, "'id' must be a string")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise ApiError(400, "'parameters' must be an object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "'inputs' must be a non-empty list of input tensors")
    if len(inputs) != 1:
        raise ApiError(400, f"model {served.name!r} takes one input tensor, got "
                            f"{len(inputs)}")
    wanted = requested_outputs(body, params)

    x = run_blocking(v2_tensor, inputs[0], served, max_images, binary)
    proba = served.predict_proba(x)
    labels = proba.argmax(axis=1)
    current_app.extensions["cnn"].metrics.record_predictions(
        request.url_rule.rule, served.name, served.class_names, labels.tolist())
    response = {"model_name": served.name, "model_version": served.version}
    if request_id is not None:
        response["id"] = request_id
    outputs, buffers = [], []
    for output in wanted:
        tensor, raw = output_tensor(output, proba, labels, served.class_names)
        if output.binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        outputs.append(tensor)
    response["outputs"] = outputs
    if not buffers:
        return jsonify(response)
    header = current_app.json.dumps(response).encode()
    answer = current_app.response_class(b"".join([header, *buffers]),
                                        mimetype="application/octet-stream")
    answer.headers[HEADER_LENGTH] = str(len(header))
    return answer


class RequestedOutput:
    """One output to answer: its name, raw bytes or JSON, top-K classification (0: none)."""

    def __init__(self, name, binary, classification):
        self.name = name
        self.binary = binary
        self.classification = classification


def _flag(params, key, default, where):
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{where} parameter {key!r} must be true or false, got {value!r}")
    return value


def requested_outputs(body, params):
    """[RequestedOutput] of a request: those named in ``outputs``, in that
    order (the first of duplicates), else every output."""
    binary = _flag(params, "binary_data_output", False, "request")
    requested = body.get("outputs", [])
    if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
        raise ApiError(400, "'outputs' must be a list of objects with a 'name'")
    if not requested:
        return [RequestedOutput(name, binary, 0) for name in OUTPUTS]
    wanted = {}
    for o in requested:
        out = o.get("parameters", {})
        if not isinstance(out, dict):
            raise ApiError(400, "output 'parameters' must be an object")
        if o["name"] not in OUTPUTS:
            raise ApiError(400, f"unknown output {o['name']!r} (outputs: "
                                f"{', '.join(OUTPUTS)})")
        if any(key.startswith("shared_memory") for key in out):
            raise ApiError(400, "the shared memory extensions are not supported: leave out "
                                "the outputs' shared_memory parameters")
        k = out.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ApiError(400, f"output parameter 'classification' must be a non-negative "
                                f"integer (the number of top classes), got {k!r}")
        if k and o["name"] != "probabilities":
            raise ApiError(400, f"output {o['name']!r} cannot be classified: ask for "
                                f"'classification' on 'probabilities'")
        wanted.setdefault(o["name"], RequestedOutput(
            o["name"], _flag(out, "binary_data", binary, "output"), k))
    return list(wanted.values())


def output_tensor(output, proba, labels, class_names):
    """(tensor JSON without data when binary, its raw bytes or None) of one output."""
    n = len(proba)
    if output.classification:
        k = min(output.classification, proba.shape[1])
        top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        # std::to_string(float): "%f"
        strings = [f"{float(proba[i, j]):f}:{j}:{class_names[j]}"
                   for i in range(n) for j in top[i]]
        tensor = {"name": output.name, "shape": [n, k], "datatype": "BYTES"}
        if not output.binary:
            return {**tensor, "data": strings}, None
        encoded = [s.encode() for s in strings]
        return tensor, b"".join(struct.pack("<I", len(s)) + s for s in encoded)
    if output.name == "probabilities":
        values = proba.astype("<f4")
        tensor = {"name": output.name, "shape": [n, proba.shape[1]], "datatype": "FP32"}
    else:
        values = labels.astype("<i8")
        tensor = {"name": output.name, "shape": [n], "datatype": "INT64"}
    if output.binary:
        return tensor, values.tobytes()
    return {**tensor, "data": values.ravel().tolist()}, None


# Answers smaller than this go out as they are: compressing them saves less
# than the Content-Encoding costs the client.
MIN_COMPRESS_BYTES = 1024


@bp.after_request
def compress(response):
    """Compress an answer with the client's preferred ``Accept-Encoding`` of
    gzip and deflate (zlib, as Triton and its clients mean it), when the answer
    is at least MIN_COMPRESS_BYTES and gets smaller."""
    if response.direct_passthrough or "Content-Encoding" in response.headers:
        return response
    coding = request.accept_encodings.best_match(("gzip", "deflate"))
    data = response.get_data()
    if len(data) >= MIN_COMPRESS_BYTES:
        response.vary.add("Accept-Encoding")
    if coding is None or len(data) < MIN_COMPRESS_BYTES:
        return response
    packed = (gzip.compress(data, compresslevel=6, mtime=0) if coding == "gzip"
              else zlib.compress(data, 6))
    if len(packed) < len(data):
        response.set_data(packed)
        response.headers["Content-Encoding"] = coding
    return response
