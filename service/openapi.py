"""The OpenAPI 3 description of the service, served at ``GET /openapi.json``.

One document (``DOCUMENT``, OpenAPI 3.0) for every route of the app: each
status an operation can answer (400, 401, 404, 408, 413, 415, 503) with the
``{"error": ...}`` body, the request bodies of /predict (multipart, JSON images
or pixels, application/x-npy, image/*) and of V2 inference, and the bearer
token (service.auth) as an http ``bearer`` security scheme that every
operation but the health checks and this document requires. Methods a path
does not list answer 405 (with ``Allow``) and unknown URLs 404, both with the
error body.

Built as Python data rather than kept as a static file so that the shared
parts (error responses, path parameters, the 401) are written once and the
examples are generated. tests/service/test_openapi.py keeps it true: it
validates it, compares it with the app's URL rules both ways and fuzzes the
app against it with schemathesis (no 500, every answer as documented).
"""
import copy

from flask import Blueprint, jsonify

import cnn
from service import repository
from service.v2_tensors import HEADER_LENGTH, V2_DATATYPES

bp = Blueprint("openapi", __name__)

# The examples use the default models' 28x28 grayscale input (Fashion-MNIST); each
# model's own input is in its description (/models: input_shape, input).
_H = _W = 28


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(name):
    """One of the error RESPONSES (an ``{"error": ...}`` body)."""
    return {"$ref": f"#/components/responses/{name}"}


DESCRIPTION = (
    "Classify images with cnn models. Errors are JSON `{\"error\": ...}`. When the "
    "server sets CNN_API_TOKEN, every endpoint but the health checks and this document "
    "needs `Authorization: Bearer <token>` (else 401 with `WWW-Authenticate: Bearer`). "
    "Methods a path does not list answer 405 (with `Allow`), unknown URLs 404.")

_OPEN = []  # the security of the endpoints that never need the token

_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "A served model: the stem of its weights file "
                        "(models/convnet.npz -> convnet).",
         "example": "convnet"}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The model's version (its `version` in /models); any other "
                           "value answers 404."}

_INT = {"type": "integer"}
_OUTPUT_PARAMETERS = {
    "type": "object", "description": "others are ignored (shared memory ones: 400)",
    "properties": {
        "binary_data": {"type": "boolean", "description": "answer this output as raw "
                        "bytes after the JSON header (binary tensor data extension)"},
        "classification": {"type": "integer", "minimum": 0, "description": "answer the "
                           "top K classes as BYTES `score:index:label` (classification "
                           "extension; `probabilities` only; 0: off)"}}}
_STR = {"type": "string"}
_NULLABLE_STR = {"type": "string", "nullable": True}
_STRINGS = {"type": "array", "items": _STR}

SCHEMAS = {
    "Error": {
        "type": "object",
        "description": "Every error: a message naming the argument and the problem.",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": _STR,
            "errors": {"type": "array", "items": _ref("ImageError"),
                       "description": "/predict: every image that could not be read."},
            "available": {**_STRINGS, "description": "unknown model: the served ones"},
        },
    },
    "ImageError": {
        "type": "object",
        "required": ["index", "name", "error"],
        "additionalProperties": False,
        "properties": {"index": {"type": "integer", "minimum": 0,
                                 "description": "0-based position in the batch"},
                       "name": {**_NULLABLE_STR, "description": "the uploaded file name"},
                       "error": _STR},
    },
    "Health": {"type": "object", "required": ["status"], "additionalProperties": False,
               "properties": {"status": {"type": "string", "enum": ["ok"]}}},
    "Ready": {
        "type": "object",
        "required": ["ready", "default", "models", "failed"],
        "additionalProperties": False,
        "properties": {"ready": {"type": "boolean"},
                       "error": {**_STR, "description": "why it is not ready (503)"},
                       "default": _NULLABLE_STR,
                       "models": _STRINGS,
                       "failed": {"type": "array", "items": _ref("FailedModel")}},
    },
    "FailedModel": {
        "type": "object", "required": ["name", "file", "error"], "additionalProperties": False,
        "properties": {"name": _STR, "file": _STR, "error": _STR},
    },
    "Models": {
        "type": "object", "required": ["default", "models", "failed"],
        "additionalProperties": False,
        "properties": {"default": _NULLABLE_STR,
                       "models": {"type": "array", "items": _ref("Model")},
                       "failed": {"type": "array", "items": _ref("FailedModel")}},
    },
    "Model": {
        "type": "object",
        "required": ["name", "file", "default", "version", "format_version", "saved_at",
                     "sha256", "size_bytes", "input_shape", "input", "num_classes", "classes",
                     "architecture", "parameters", "test_accuracy", "trained_at",
                     "normalization", "backend", "threads", "summary"],
        "additionalProperties": False,
        "properties": {
            "name": _STR, "file": _STR, "default": {"type": "boolean"},
            "version": _STR,
            "format_version": {"type": "integer", "nullable": True},
            "saved_at": _NULLABLE_STR,
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "size_bytes": {"type": "integer", "minimum": 0},
            "input_shape": {"type": "array", "items": _INT, "minItems": 3, "maxItems": 3,
                            "description": "[channels, height, width]"},
            "input": {
                "type": "object", "additionalProperties": False,
                "required": ["channels", "height", "width", "color", "fit", "invert"],
                "description": "how /predict turns an image file into this model's input: "
                               "fit 'crop' (resize the short side, centre-crop: the decode "
                               "its training images had) or 'pad' (Fashion-MNIST style: fit "
                               "inside, pad); invert is the default of the invert option",
                "properties": {"channels": {"type": "integer", "enum": [1, 3]},
                               "height": _INT, "width": _INT,
                               "color": {"type": "string", "enum": ["grayscale", "RGB"]},
                               "fit": {"type": "string", "enum": ["pad", "crop"]},
                               "invert": {"type": "string", "enum": ["auto", "never"]}}},
            "num_classes": {"type": "integer", "minimum": 1},
            "classes": _STRINGS,
            "architecture": {"type": "object", "required": ["name", "layers"],
                             "properties": {"name": _NULLABLE_STR,
                                            "layers": {"type": "array", "nullable": True,
                                                       "items": {"type": "object"}}}},
            "parameters": {"type": "integer", "minimum": 0},
            "test_accuracy": {"type": "number", "nullable": True},
            "trained_at": _NULLABLE_STR,
            "normalization": {"type": "object", "nullable": True},
            "backend": _STR,
            "threads": {"type": "integer", "nullable": True},
            "summary": {"type": "object", "description": "the training summary"},
        },
    },
    "Pixels": {
        "description": f"Pixels of the model's input size H x W (here {_H} x {_W}), for a "
                       f"grayscale model one image (H x W or 1 x H x W) or a batch "
                       f"(N x H x W or N x 1 x H x W); for a colour (RGB) model "
                       f"N x 3 x H x W or N x H x W x 3 (or one image 3 x H x W or "
                       f"H x W x 3). 0-255, or 0-1 when no value exceeds 1; already "
                       f"model input: never inverted or resized.",
        "type": "array",
        "items": {"anyOf": [
            {"type": "array", "items": {"type": "number"}},                     # rows
            {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            {"type": "array", "items": {"type": "array", "items": {
                "type": "array", "items": {"type": "number"}}}},
        ]},
    },
    "PredictJson": {
        "type": "object",
        "description": "Exactly one of `images` (base64 image files or data: URLs; a "
                       "single string is one image) or `pixels`.",
        "additionalProperties": False,
        "properties": {
            "images": {"oneOf": [_STR, {"type": "array", "items": _STR}]},
            "pixels": _ref("Pixels"),
        },
        "oneOf": [{"required": ["images"]}, {"required": ["pixels"]}],
    },
    "TopClass": {
        "type": "object", "required": ["label", "class", "probability"],
        "additionalProperties": False,
        "properties": {"label": {"type": "integer", "minimum": 0}, "class": _STR,
                       "probability": {"type": "number", "minimum": 0, "maximum": 1}},
    },
    "Prediction": {
        "type": "object",
        "required": ["index", "name", "label", "class", "probability", "top_k"],
        "additionalProperties": False,
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "name": {**_NULLABLE_STR, "description": "the file name (multipart), "
                                                     "`name.npy[i]` for arrays, else null"},
            "label": {"type": "integer", "minimum": 0},
            "class": _STR,
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {"type": "array", "minItems": 1, "items": _ref("TopClass")},
        },
    },
    "Predictions": {
        "type": "object", "required": ["model", "version", "predictions"],
        "additionalProperties": False,
        "properties": {"model": _STR, "version": _STR,
                       "predictions": {"type": "array", "minItems": 1,
                                       "items": _ref("Prediction"),
                                       "description": "in input order"},
                       "partial": {"type": "boolean",
                                   "description": "with ?partial=true: whether some images "
                                                  "were left out (listed in errors)"},
                       "errors": {"type": "array", "items": _ref("ImageError"),
                                  "description": "with ?partial=true: the images that "
                                                 "could not be read"}},
    },
    "V2ServerMetadata": {
        "type": "object", "required": ["name", "version", "extensions"],
        "additionalProperties": False,
        "properties": {"name": _STR, "version": _STR, "extensions": _STRINGS},
    },
    "V2Live": {"type": "object", "required": ["live"], "additionalProperties": False,
               "properties": {"live": {"type": "boolean"}}},
    "V2Ready": {"type": "object", "required": ["ready"], "additionalProperties": False,
                "properties": {"ready": {"type": "boolean"}, "error": _STR}},
    "V2ModelReady": {"type": "object", "required": ["name", "ready"],
                     "additionalProperties": False,
                     "properties": {"name": _STR, "ready": {"type": "boolean"},
                                    "error": _STR}},
    "V2ModelConfig": {
        "type": "object",
        "required": ["name", "platform", "backend", "max_batch_size", "input", "output"],
        "description": "Triton's ModelConfig as JSON (tritonclient's get_model_config).",
        "properties": {
            "name": _STR, "platform": _STR, "backend": _STR,
            "version_policy": {"type": "object"},
            "max_batch_size": _INT,
            "input": {"type": "array", "items": {"type": "object"}},
            "output": {"type": "array", "items": {"type": "object"}},
            "instance_group": {"type": "array", "items": {"type": "object"}},
            "dynamic_batching": {"type": "object", "properties": {
                "max_queue_delay_microseconds": _INT,
                "preferred_batch_size": {"type": "array", "items": _INT}}},
        },
    },
    "V2TensorMetadata": {
        "type": "object", "required": ["name", "datatype", "shape"],
        "additionalProperties": False,
        "properties": {"name": _STR, "datatype": _STR,
                       "shape": {"type": "array", "items": _INT}},
    },
    "V2ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "additionalProperties": False,
        "properties": {"name": _STR, "versions": _STRINGS, "platform": _STR,
                       "inputs": {"type": "array", "items": _ref("V2TensorMetadata")},
                       "outputs": {"type": "array", "items": _ref("V2TensorMetadata")}},
    },
    "V2InputTensor": {
        "type": "object", "required": ["name", "shape", "datatype"],
        "description": "`data`, or `parameters.binary_data_size` with the bytes after the "
                       "JSON header (binary tensor data extension).",
        "properties": {
            "name": _STR,
            "shape": {"type": "array", "items": _INT, "minItems": 3, "maxItems": 4,
                      "description": f"[N, C, H, W] of the model's input (e.g. "
                                     f"[N, 1, {_H}, {_W}] or [N, {_H}, {_W}] for the "
                                     f"default grayscale models)"},
            "datatype": {"type": "string", "enum": list(V2_DATATYPES),
                         "description": "integer types (UINT8, INT64, ...): pixel values "
                                        "0-255; float types (FP32, FP16, FP64, BF16): 0-1; "
                                        "BOOL and BYTES are 400"},
            "data": {"type": "array", "description": "the values, flat (row-major) or "
                                                     "nested as the shape"},
            "parameters": {"type": "object", "description": "others are ignored "
                           "(shared memory ones: 400)", "properties": {
                               "binary_data_size": {
                                   "type": "integer", "minimum": 0,
                                   "description": "bytes of raw little-endian data after "
                                                  "the JSON header: exactly the shape's "
                                                  "values x the datatype's size"}}},
        },
    },
    "V2InferRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {**_NULLABLE_STR, "description": "echoed in the answer (null: none)"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {
                "type": "boolean", "description": "the default of every output's "
                                                  "`binary_data` (false)"}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1,
                       "items": _ref("V2InputTensor")},
            "outputs": {"type": "array", "description": "the outputs to answer (default "
                        "or empty: all)", "items": {
                            "type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string",
                                                    "enum": ["probabilities", "labels"]},
                                           "parameters": _OUTPUT_PARAMETERS}}},
        },
    },
    "V2OutputTensor": {
        "type": "object", "required": ["name", "shape", "datatype"],
        "description": "`data`, or with `binary_data` its bytes after the JSON header "
                       "(`parameters.binary_data_size`). A classified output is BYTES "
                       "[N, K] of `score:index:label`.",
        "additionalProperties": False,
        "properties": {"name": {"type": "string", "enum": ["probabilities", "labels"]},
                       "shape": {"type": "array", "items": _INT},
                       "datatype": {"type": "string", "enum": ["FP32", "INT64", "BYTES"]},
                       "data": {"type": "array", "items": {
                           "oneOf": [{"type": "number"}, {"type": "string"}]}},
                       "parameters": {
                           "type": "object", "required": ["binary_data_size"],
                           "additionalProperties": False,
                           "properties": {"binary_data_size": {"type": "integer",
                                                               "minimum": 0}}}},
    },
    "V2InferResponse": {
        "type": "object", "required": ["model_name", "model_version", "outputs"],
        "additionalProperties": False,
        "properties": {"model_name": _STR, "model_version": _STR, "id": _STR,
                       "outputs": {"type": "array", "items": _ref("V2OutputTensor")}},
    },
}

_ERROR_BODY = {"application/json": {"schema": _ref("Error")}}
RESPONSES = {
    name: {"description": text, "content": _ERROR_BODY}
    for name, text in {
        "BadRequest": "Bad input: the message says which argument and why.",
        "RequestTimeout": "The body was not all sent within CNN_BODY_TIMEOUT seconds.",
        "NotFound": "Unknown model (or model version).",
        "TooLarge": "Body over CNN_MAX_CONTENT_LENGTH, more than CNN_MAX_IMAGES images, "
                    "image files over CNN_MAX_REQUEST_PIXELS in all, a compressed body "
                    "over CNN_MAX_CONTENT_LENGTH once decompressed, or a JSON body of "
                    "more values than a full batch.",
        "UnsupportedMediaType": "Unsupported Content-Type or Content-Encoding.",
        "NotReady": "No model loaded, or the named model's file failed to load; on a "
                    "POST, also the worker holding CNN_WORKER_BODY_BYTES of request "
                    "bodies already (with Retry-After).",
    }.items()
}
RESPONSES["Unauthorized"] = {
    "description": "Missing or wrong bearer token (only when the server sets CNN_API_TOKEN).",
    "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"},
                                     "description": "`Bearer realm=\"cnn\"`"}},
    "content": _ERROR_BODY,
}

_BLANK = [[0] * _W for _ in range(_H)]
_PREDICT_JSON_EXAMPLES = {
    "pixels": {"summary": "one blank image as raw pixels", "value": {"pixels": _BLANK}},
    "images": {"summary": "base64 image files", "value": {"images": [
        # an 8x8 black PNG
        "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAADElEQVR42mNgoA4A"
        "AABIAAEQRe/SAAAAAElFTkSuQmCC"]}},
}
_INFER_EXAMPLE = {"id": "1", "inputs": [{"name": "input", "shape": [1, 1, _H, _W],
                                         "datatype": "UINT8", "data": [0] * (_H * _W)}]}

_PREDICT = {
    "post": {
        "operationId": "predict",
        "summary": "Classify a batch of images",
        "description": "The answer lists the images in input order. If any image cannot "
                       "be read the answer is 400 and `errors` lists every bad one; "
                       "nothing is classified then, unless `partial=true`: the readable "
                       "images are classified (each keeps its `index`) and `errors` lists "
                       "the others (still 400 when none is readable).",
        "parameters": [
            {"name": "model", "in": "query", "schema": {"type": "string", "minLength": 1},
             "description": "a served model (default: CNN_DEFAULT_MODEL or the first)"},
            {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1},
             "description": "classes per image, 1 to the model's number of classes "
                            "(default 3)"},
            {"name": "invert", "in": "query",
             "schema": {"type": "string", "enum": ["auto", "true", "false", "yes", "no",
                                                   "1", "0"]},
             "description": "invert image files to light-on-dark: auto (by the "
                            "background), or always/never; case-insensitive. Default: the "
                            "model's own (its input.invert: auto for models trained on light "
                            "objects on black, else never)"},
            {"name": "partial", "in": "query",
             "schema": {"type": "string", "enum": ["true", "false", "yes", "no", "1", "0"]},
             "description": "true: classify the readable image files and list the bad ones "
                            "in `errors` (200, `partial`: true when some were left out; "
                            "still 400 when none is readable). Default false: any bad one "
                            "is 400 and nothing is classified"},
        ],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "description": "Image files or .npy arrays, "
                           "each a file part (with a filename), under any field names; "
                           "a `*.npy` part adds its N images.",
                           "properties": {"file": {"type": "array", "items": {
                               "type": "string", "format": "binary"}}}},
                "encoding": {"file": {"contentType": "image/png, image/jpeg, image/gif, "
                                                     "image/bmp, image/webp, "
                                                     "application/x-npy"}}},
            "application/json": {"schema": _ref("PredictJson"),
                                 "examples": _PREDICT_JSON_EXAMPLES},
            "application/x-npy": {
                "schema": {"type": "string", "format": "binary",
                           "description": f"One array written by np.save: uint8 or float, "
                                          f"(N, {_H}, {_W}), (N, 1, {_H}, {_W}) or "
                                          f"({_H}, {_W})."}},
            "image/*": {"schema": {"type": "string", "format": "binary",
                                   "description": "one image file"}},
        }},
        "responses": {
            "200": _json(_ref("Predictions"), "The predictions, in input order."),
            "400": _error("BadRequest"), "401": _error("Unauthorized"),
            "404": _error("NotFound"), "408": _error("RequestTimeout"),
            "413": _error("TooLarge"),
            "415": _error("UnsupportedMediaType"), "503": _error("NotReady"),
        },
    },
}


def _get(operation_id, summary, responses, parameters=None, security=None):
    op = {"operationId": operation_id, "summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if security is not None:
        op["security"] = security
    else:
        op["responses"]["401"] = _error("Unauthorized")
    return {"get": op}


_HEADER_LENGTH = {
    "name": HEADER_LENGTH, "in": "header", "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "binary tensor data extension: the length of the JSON part of the "
                   "body; the bytes after it are the inputs' data"}
_INFER_DESCRIPTION = (
    "The request is JSON with or without a Content-Type (also sent as "
    "application/octet-stream when inputs carry binary data), optionally compressed "
    "(`Content-Encoding: gzip` or `deflate`; CNN_MAX_CONTENT_LENGTH bounds the "
    "decompressed size too). Extensions: `binary_tensor_data` (inputs with "
    "`parameters.binary_data_size` and the Inference-Header-Content-Length header; "
    "outputs with `binary_data` or the request's `binary_data_output` answered as "
    "raw bytes after the JSON header, with Content-Type application/octet-stream) "
    "and `classification` (an output's `classification: K`). Answers are compressed "
    "when `Accept-Encoding` takes gzip or deflate and the answer is worth it.")


def _v2_paths():
    paths = {}
    for suffix, params, tag in (("", [_NAME], ""),
                                ("/versions/{version}", [_NAME, _VERSION], "Version")):
        base = "/v2/models/{name}" + suffix
        paths[base] = _get(
            f"v2ModelMetadata{tag}", "Open Inference Protocol model metadata",
            {"200": _json(_ref("V2ModelMetadata"), "The model's tensors."),
             "404": _error("NotFound"), "503": _error("NotReady")}, params)
        paths[base + "/config"] = _get(
            f"v2ModelConfig{tag}", "Triton's model configuration",
            {"200": _json(_ref("V2ModelConfig"), "Batch size limit, tensors, batching."),
             "404": _error("NotFound"), "503": _error("NotReady")}, params)
        paths[base + "/ready"] = _get(
            f"v2ModelReady{tag}", "Open Inference Protocol model readiness",
            {"200": _json(_ref("V2ModelReady"), "Ready."),
             "404": _error("NotFound"),
             "503": _json(_ref("V2ModelReady"), "The model's file failed to load.")},
            params)
        paths[base + "/infer"] = {"post": {
            "operationId": f"v2Infer{tag}",
            "summary": "Open Inference Protocol inference",
            "description": _INFER_DESCRIPTION,
            "parameters": [*params, _HEADER_LENGTH],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("V2InferRequest"),
                                     "example": _INFER_EXAMPLE},
                "application/octet-stream": {"schema": {
                    "type": "string", "format": "binary",
                    "description": f"{HEADER_LENGTH} bytes of V2InferRequest JSON, then "
                                   f"the inputs' binary data"}}}},
            "responses": {
                "200": {"description": "`probabilities` (FP32 [N, K]) and `labels` (INT64 "
                                       "[N]), or those named in `outputs`; with binary "
                                       "outputs, the JSON header then their bytes.",
                        "headers": {HEADER_LENGTH: {
                            "schema": {"type": "integer", "minimum": 0},
                            "description": "binary answers: the length of the JSON "
                                           "header"}},
                        "content": {"application/json": {"schema": _ref("V2InferResponse")},
                                    "application/octet-stream": {"schema": {
                                        "type": "string", "format": "binary"}}}},
                "400": _error("BadRequest"), "401": _error("Unauthorized"),
                "404": _error("NotFound"), "408": _error("RequestTimeout"),
                "413": _error("TooLarge"),
                "415": _error("UnsupportedMediaType"), "503": _error("NotReady"),
            },
        }}
    return paths


def _document():
    v2_server = _get("v2ServerMetadata", "Open Inference Protocol server metadata",
                     {"200": _json(_ref("V2ServerMetadata"), "Server metadata.")})
    paths = {
        "/": _get("page", "A page to upload, drop or draw images", {
            "200": {"description": "HTML", "content": {"text/html": {"schema": _STR}}}}),
        "/predict": _PREDICT,
        "/health": _get("health", "Liveness: always 200",
                        {"200": _json(_ref("Health"), "Alive.")}, security=_OPEN),
        "/ready": _get("ready", "Readiness: the default model is loaded", {
            "200": _json(_ref("Ready"), "Ready."),
            "503": _json(_ref("Ready"), "Not ready; `error` says why.")}, security=_OPEN),
        "/models": _get("models", "Served models and files that failed to load",
                        {"200": _json(_ref("Models"), "The models.")}),
        "/models/{name}": _get("model", "One served model", {
            "200": _json(_ref("Model"), "The model."), "404": _error("NotFound"),
            "503": _error("NotReady")}, [_NAME]),
        "/metrics": _get("metrics", "Prometheus metrics", {
            "200": {"description": "The Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": _STR}}}}),
        "/openapi.json": _get("openapi", "This document", {
            "200": _json({"type": "object"}, "OpenAPI 3.0")}, security=_OPEN),
        "/v2": v2_server,
        "/v2/": copy.deepcopy(v2_server),
        "/v2/health/live": _get("v2Live", "Open Inference Protocol liveness",
                                {"200": _json(_ref("V2Live"), "Alive.")}, security=_OPEN),
        "/v2/health/ready": _get("v2Ready", "Open Inference Protocol readiness", {
            "200": _json(_ref("V2Ready"), "Ready."),
            "503": _json(_ref("V2Ready"), "Not ready; `error` says why.")},
            security=_OPEN),
        **_v2_paths(),
        **repository.openapi_paths(),
    }
    paths["/v2/"]["get"]["operationId"] = "v2ServerMetadataSlash"
    return {
        "openapi": "3.0.3",
        "info": {"title": "cnn", "version": cnn.__version__,
                 "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "CNN_API_TOKEN; enforced only when the server sets it."}},
        },
        "security": [{"bearerAuth": []}],
    }


DOCUMENT = _document()


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(DOCUMENT)
