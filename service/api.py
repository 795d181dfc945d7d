"""The service's own JSON API: /predict, /health, /ready, /models."""
import re

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from service.errors import ApiError
from service.inputs import (
    NPY_CONTENT_TYPE,
    check_count,
    decode_batch,
    json_image_items,
    json_pixels,
    json_value_limit,
    multipart_batch,
    multipart_items,
    npy_pixels,
    read_json,
)
from service.offload import run_blocking

bp = Blueprint("api", __name__)

PREDICT_PARAMS = ("model", "top_k", "invert", "partial")
PREDICT_JSON_KEYS = ("images", "pixels")
DEFAULT_TOP_K = 3
INVERT = {"auto": "auto", "true": True, "yes": True, "1": True,
          "false": False, "no": False, "0": False}
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def state():
    return current_app.extensions["cnn"]


def parse_top_k(value, num_classes):
    if value is None:
        return min(DEFAULT_TOP_K, num_classes)
    if not re.fullmatch(r"[0-9]+", value.strip()) or not 1 <= int(value) <= num_classes:
        raise ApiError(400, f"top_k must be an integer from 1 to {num_classes}, got {value!r}")
    return int(value)


def parse_invert(value):
    """The invert option; None (not given): the model's own default."""
    if value is None:
        return None
    try:
        return INVERT[value.strip().lower()]
    except KeyError:
        raise ApiError(400, f"invert must be auto, true or false, got {value!r}") from None


def parse_partial(value):
    """The partial option (default false: one bad image refuses the batch)."""
    if value is None:
        return False
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ApiError(400, f"partial must be true or false, got {value!r}") from None


def model_param(args):
    name = args.get("model")
    if name is not None and not name.strip():
        raise ApiError(400, "model must not be empty (leave it out for the default model)")
    return name


@bp.post("/predict")
def predict():
    """Classify a batch of images; see service.inputs for the accepted bodies.

    Strict by default: one unreadable image makes the answer 400 with every bad
    one in ``errors``, nothing classified. ``?partial=true``: the readable
    images are classified (each prediction keeps its ``index`` in the request)
    and the answer adds ``partial`` (true when some were left out) and
    ``errors`` (the same list as the 400's). If no image is readable the answer
    is still 400: there is nothing to return. Arrays (JSON pixels, .npy) are
    all or nothing either way."""
    st, cfg = state(), current_app.config
    unknown = sorted(set(request.args) - set(PREDICT_PARAMS))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(unknown)} (allowed: "
                            f"{', '.join(PREDICT_PARAMS)})")
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        kind = "multipart"
    elif request.is_json:
        kind = "json"
    elif mimetype.startswith("image/"):
        kind = "image"
    elif mimetype == NPY_CONTENT_TYPE:
        kind = "npy"
    else:
        raise ApiError(415, f"unsupported Content-Type {mimetype or '(none)'!r}: send "
                            f"multipart/form-data (image or .npy files), application/json "
                            f"({{\"images\": [base64...]}} or {{\"pixels\": [...]}}), "
                            f"{NPY_CONTENT_TYPE} (a NumPy array written by np.save) or one "
                            f"image/* file")
    served = st.registry.get(model_param(request.args))
    top_k = parse_top_k(request.args.get("top_k"), served.num_classes)
    invert = parse_invert(request.args.get("invert"))
    partial = parse_partial(request.args.get("partial"))
    max_images, max_pixels = cfg["CNN_MAX_IMAGES"], cfg["CNN_MAX_PIXELS"]

    # a .npy body is a header check and a copy: not worth a thread switch
    x, names, kept, errors = run_blocking(model_input, kind, served, invert, max_images,
                                          max_pixels, partial, small=(kind == "npy"))
    if not kept:
        n = len(errors)
        what = "the image could not be read" if n == 1 else f"none of the {n} images " \
                                                             f"could be read"
        raise ApiError(400, f"{what}; nothing was classified", errors=errors)
    proba = served.predict_proba(x)
    labels = proba.argmax(axis=1).tolist()
    st.metrics.record_predictions(request.url_rule.rule, served.name, served.class_names,
                                  labels)
    answer = {"model": served.name, "version": served.version,
              "predictions": predictions_list(proba, top_k, served.class_names, names,
                                              kept)}
    if partial:
        answer.update(partial=bool(errors), errors=errors)
    return jsonify(answer)


def model_input(kind, served, invert, max_images, max_pixels, partial=False):
    """(x, names, kept, errors): the request body as the model's input (N, C, H,
    W), the file names of multipart parts (else None), the request positions of
    the rows of x and the unreadable images (only ever non-empty with
    ``partial``). CPU work: run off the event loop."""
    names, errors = None, []
    if kind == "json":
        body = read_json(request, json_value_limit(served, max_images))
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object: {\"images\": [...]} or "
                                "{\"pixels\": [...]}")
        extra = sorted(set(body) - set(PREDICT_JSON_KEYS))
        if extra:
            raise ApiError(400, f"unknown key(s) {', '.join(map(repr, extra))} in the JSON "
                                f"body: send \"images\" or \"pixels\"; options (model, "
                                f"top_k, invert, partial) go in the query string")
        if ("images" in body) == ("pixels" in body):
            raise ApiError(400, "the JSON body must have exactly one of \"images\" (base64 "
                                "image files) or \"pixels\" (raw pixel arrays)")
        if "pixels" in body:
            x = json_pixels(body["pixels"], served, max_images)
        else:
            x, kept, errors = image_batch(json_image_items(body["images"], max_images),
                                          served, max_pixels, invert, partial)
            return x, None, kept, errors
    elif kind == "npy":
        x = npy_pixels(request.get_data(), served, max_images)
    elif kind == "multipart":
        parts = multipart_items(request)
        if partial:
            return multipart_batch(parts, served, max_pixels, invert, max_images,
                                   current_app.logger, partial=True)
        x, names = multipart_batch(parts, served, max_pixels, invert, max_images,
                                   current_app.logger)
    else:
        items = [(request.get_data(), None)]
        check_count(len(items), max_images)
        x, kept, errors = image_batch(items, served, max_pixels, invert, partial)
        return x, [None], kept, errors
    return x, names, range(len(x)), errors


def image_batch(items, served, max_pixels, invert, partial):
    """(x, kept, errors) of encoded image files (see decode_batch)."""
    if partial:
        return decode_batch(items, served, max_pixels, invert, current_app.logger,
                            partial=True)
    x = decode_batch(items, served, max_pixels, invert, current_app.logger)
    return x, range(len(x)), []


def predictions_list(proba, k, class_names, names=None, indexes=None):
    """The "predictions" of /predict for class probabilities (N, K), in order;
    ``indexes``: each row's position in the request (default 0..N-1), which
    also picks its name from ``names``.

    The k most likely classes of every row with one argsort of the whole batch
    (stable: ties keep the lower label first, as argmax does), converted to
    Python numbers with two tolist() calls rather than per element."""
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    top_labels = order.tolist()
    top_probs = np.take_along_axis(proba, order, axis=1).tolist()
    predictions = []
    if indexes is None:
        indexes = range(len(proba))
    for i, labels, probs in zip(indexes, top_labels, top_probs):
        top = [{"label": label, "class": class_names[label], "probability": p}
               for label, p in zip(labels, probs)]
        first = top[0]
        predictions.append({"index": i, "name": names[i] if names else None,
                            "label": first["label"], "class": first["class"],
                            "probability": first["probability"], "top_k": top})
    return predictions


@bp.get("/health")
def health():
    """Liveness: the process answers. Always 200, even with no model loaded."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    """Readiness: 200 when the default model is loaded, else 503 with the reason."""
    registry = state().registry
    reason = registry.not_ready_reason()
    body = {"ready": reason is None, "default": registry.default_name,
            "models": list(registry.models),
            "failed": [f.describe() for f in registry.failed.values()]}
    if reason:
        return jsonify({"error": reason, **body}), 503
    return jsonify(body)


@bp.get("/models")
def models():
    return jsonify(state().registry.describe())


@bp.get("/models/<name>")
def model_detail(name):
    registry = state().registry
    served = registry.get(name)
    return jsonify(served.describe(default=(served.name == registry.default_name)))
