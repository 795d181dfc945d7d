"""Triton's model repository extension: list, load and unload models, under /v2/repository.

=========  ==========================================  ====================================
``POST``   ``/v2/repository/index``                    every model version of the folder:
                                                       ``[{"name", "version", "state",
                                                       "reason"}]``; ``{"ready": true}``
                                                       lists only the READY ones
``POST``   ``/v2/repository/models/<name>/load``       serve ``name`` again (and try its
                                                       files again): ``{}`` once loaded here
``POST``   ``/v2/repository/models/<name>/unload``     stop serving ``name``: ``{}``
=========  ==========================================  ====================================

A version is READY (served) or UNAVAILABLE with a ``reason``: ``unloaded``, the
load error, or ``not loaded yet`` (a file being written). A flat ``NAME.npz``
has a ``version`` once loaded (when it was saved); a ``NAME/VERSION/model.npz``
always has its folder's number.

Semantics (Triton's explicit model control, on top of the folder's polling):
every model of the folder is served unless it was unloaded. An unload or load
is recorded in a small state file (``.cnn-repository.json``, written
atomically, in ``CNN_STATE_DIR``, default the models folder), because the
request reaches one gunicorn worker and every worker must follow: the worker
that got the request applies it before answering, the others when they next
look at the folder (within ``CNN_RELOAD_INTERVAL`` seconds). Unloading applies
to all versions of a name, lasts across restarts (delete the file to forget
it), and makes requests for the name 503 "unloaded"; a file added or replaced
meanwhile is not loaded until the name is loaded again. Loading a model that is
served already looks at its files again (a file that failed is retried) and
answers 503 with the error when none of its versions loads (as every
endpoint does for a model whose file fails to load). Triton's
``config`` and ``file:`` parameters (a model sent in the request) are refused:
models come from the folder only. With ``CNN_RELOAD_INTERVAL=0`` the folder is
read once and load/unload answer 409 (other workers would never see them).

The bearer token (service.auth) protects these endpoints like every other.
"""
from flask import Blueprint, current_app, jsonify, request

from service.errors import ApiError
from service.offload import run_blocking

bp = Blueprint("repository", __name__, url_prefix="/v2/repository")

MAX_BODY_BYTES = 64 * 1024   # an index/load/unload request is a few parameters


def registry():
    return current_app.extensions["cnn"].registry


def request_object(allowed_parameters=()):
    """The JSON body (empty: ``{}``); 400 unless an object whose ``parameters``
    (an object) hold only ``allowed_parameters``."""
    data = request.get_data()
    if len(data) > MAX_BODY_BYTES:
        raise ApiError(413, f"a repository request body must be at most {MAX_BODY_BYTES} "
                            f"bytes, got {len(data)}")
    if not data.strip():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object (or empty)")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ApiError(400, "'parameters' must be an object")
    for key in parameters:
        if key not in allowed_parameters:
            raise ApiError(400, f"parameter {key!r} is not supported: models are loaded "
                                f"from the models folder only"
                                if key == "config" or key.startswith("file:")
                           else f"unknown parameter {key!r}"
                                + (f" (allowed: {', '.join(allowed_parameters)})"
                                   if allowed_parameters else ""))
    return body


@bp.post("/index")
def index():
    body = request_object()
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise ApiError(400, f"'ready' must be true or false, got {ready!r}")
    return jsonify(registry().index(ready_only=ready))


def _controlled(name):
    """The registry, once model control is possible and ``name`` is in the folder."""
    reg = registry()
    if reg.reload_interval <= 0:
        raise ApiError(409, "model control is off: the server reads the models folder "
                            "only at start (CNN_RELOAD_INTERVAL=0)")
    if not reg.in_folder(name) and name not in reg.models:
        raise ApiError(404, f"no weights file for model {name!r} in the models folder "
                            f"({name}.npz or {name}/VERSION/model.npz)")
    return reg


def _record(reg, name, unloaded):
    try:
        run_blocking(reg.set_unloaded, name, unloaded)
    except OSError as exc:
        current_app.logger.error("cannot write the model repository state %s: %s",
                                 reg.state_path, exc)
        raise ApiError(503, f"cannot record the model's state: {exc.strerror or exc} "
                            f"(the state file lives in CNN_STATE_DIR, by default the "
                            f"models folder, which must be writable)") from None
    reg.refresh(retry=(name,))


@bp.post("/models/<name>/load")
def load(name):
    request_object()
    reg = _controlled(name)
    _record(reg, name, unloaded=False)
    if name not in reg.models:   # 503 as for any model whose file does not load
        raise ApiError(503, reg.why_not_served(name))
    return jsonify({})


@bp.post("/models/<name>/unload")
def unload(name):
    request_object(allowed_parameters=("unload_dependents",))   # tritonclient sends it
    reg = _controlled(name)
    _record(reg, name, unloaded=True)
    return jsonify({})


def openapi_paths():
    """The OpenAPI description of these endpoints (merged by service.openapi)."""
    def ref(kind, name):
        return {"$ref": f"#/components/{kind}/{name}"}

    def error(text):
        return {"description": text,
                "content": {"application/json": {"schema": ref("schemas", "Error")}}}

    parameters = {"type": "object", "description": "Triton's request parameters; "
                  "`config` and `file:` (a model sent in the request) are refused",
                  "additionalProperties": True}
    common = {"400": ref("responses", "BadRequest"), "401": ref("responses", "Unauthorized"),
              "408": ref("responses", "RequestTimeout"), "413": ref("responses", "TooLarge"),
              "503": ref("responses", "NotReady")}
    entry = {"type": "object", "required": ["name", "state"], "additionalProperties": False,
             "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                            "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                            "reason": {"type": "string"}}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "a model of the folder (NAME.npz or NAME/VERSION/model.npz)"}
    control = {
        "200": {"description": "Done on this worker; the others follow within "
                               "CNN_RELOAD_INTERVAL seconds.",
                "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False}}}},
        "404": ref("responses", "NotFound"),
        "409": error("Model control is off (CNN_RELOAD_INTERVAL=0)."),
        **common}

    def body(properties, example):
        return {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": properties}, "example": example}}}

    def post(operation_id, summary, responses, request, params=None):
        op = {"operationId": operation_id, "summary": summary, "requestBody": request,
              "responses": responses}
        if params:
            op["parameters"] = params
        return {"post": op}

    return {
        "/v2/repository/index": post(
            "repositoryIndex", "Triton model repository: every model version and its state",
            {"200": {"description": "One entry per model version of the folder.",
                     "content": {"application/json": {"schema": {
                         "type": "array", "items": entry}}}}, **common},
            body({"ready": {"type": "boolean"}}, {"ready": False})),
        "/v2/repository/models/{name}/load": post(
            "repositoryLoad", "Triton model repository: serve a model (again)",
            control, body({"parameters": parameters}, {"parameters": {}}), [name]),
        "/v2/repository/models/{name}/unload": post(
            "repositoryUnload", "Triton model repository: stop serving a model",
            control, body({"parameters": parameters},
                          {"parameters": {"unload_dependents": False}}), [name]),
    }
