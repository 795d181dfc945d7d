"""HTTP service for cnn models: ``create_app(test_config=None)``.

Run it with gunicorn (``gunicorn 'service:create_app()'``) or, for a quick look,
``flask --app service run``. Every worker process calls :func:`create_app`
and loads the models itself (the app is not preloaded), so each worker owns its
models, their locks and its kernel threads.

Endpoints
=========

==========  ===========================================  ===========================================
``GET``     ``/``                                        HTML page: upload, drop or draw images
``POST``    ``/predict[?model=&top_k=&invert=]``         classify a batch (service.inputs)
``GET``     ``/health``                                  liveness: always 200
``GET``     ``/ready``                                   200 when the default model is loaded, else 503
``GET``     ``/models``                                  served models and files that failed to load
``GET``     ``/models/<name>``                           one model: shapes, classes, architecture,
                                                         parameters, test accuracy, dates
``GET``     ``/metrics``                                 Prometheus metrics (service.metrics)
``GET``     ``/openapi.json``                            OpenAPI 3 description (service.openapi)
``GET``     ``/v2``                                      Open Inference Protocol server metadata
``GET``     ``/v2/health/live``, ``/v2/health/ready``    OIP health
``GET``     ``/v2/models/<name>[/versions/<v>]``         OIP model metadata
``GET``     ``/v2/models/<name>[/versions/<v>]/ready``   OIP model ready
``POST``    ``/v2/models/<name>[/versions/<v>]/infer``   OIP inference (service.v2)
``POST``    ``/v2/repository/index``                     Triton model repository: models and states
``POST``    ``/v2/repository/models/<name>/load``        serve a model (again) (service.repository)
``POST``    ``/v2/repository/models/<name>/unload``      stop serving a model
==========  ===========================================  ===========================================

``/predict`` takes multipart image (or ``.npy``) files, JSON (base64 files or
raw pixels), an ``application/x-npy`` array or one ``image/*`` file (see
service.inputs) and answers ``{"model", "version", "predictions": [{"index",
"name", "label", "class", "probability", "top_k": [{"label", "class",
"probability"}]}]}`` in input order; ``top_k`` defaults to 3 and must be an
integer from 1 to the number of classes; ``invert`` is ``auto`` (default),
``true`` or ``false``.

Request bodies are read before any view, within ``CNN_MAX_CONTENT_LENGTH``
bytes and ``CNN_BODY_TIMEOUT`` seconds whatever the transfer encoding
(service.body); with ``CNN_API_TOKEN`` set, every endpoint but the health
checks and ``/openapi.json`` needs ``Authorization: Bearer <token>``
(service.auth).

Errors are always JSON ``{"error": "..."}``: 400 bad input (undecodable images
with the per-image ``errors`` list, bad JSON, NaN, wrong shapes or dtypes, bad
base64, bad .npy files, bad ``top_k``, empty batch), 404 unknown URL or model,
401 missing or wrong bearer token, 405 wrong method, 408 body not sent within
``CNN_BODY_TIMEOUT``, 413 body over ``CNN_MAX_CONTENT_LENGTH``, more than
``CNN_MAX_IMAGES`` images or ``CNN_MAX_REQUEST_PIXELS`` pixels, 415 unsupported
Content-Type, 503 no model loaded.
Unexpected failures are logged and answered 500 ``{"error": "internal server
error"}``.

Threads: each worker's kernels use ``CNN_THREADS`` threads (default: cores //
``CNN_WORKERS``), ``create_app`` also caps the process's BLAS pool to that
number, and one forward pass runs at a time per worker (service.models), so
workers x kernel threads stay within the cores.

Configuration: see service.config (``CNN_MODEL_DIR``, ``CNN_DEFAULT_MODEL``,
``CNN_MAX_CONTENT_LENGTH``, ``CNN_MAX_IMAGES``, ``CNN_MAX_PIXELS``,
``CNN_MAX_REQUEST_PIXELS``, ``CNN_WORKER_BODY_BYTES``, ``CNN_BODY_TIMEOUT``, ``CNN_API_TOKEN``, ``CNN_MAX_MODEL_BYTES``,
``CNN_WORKERS``, ``CNN_THREADS``, ``CNN_BACKEND``, ``CNN_RELOAD_INTERVAL``,
``CNN_STATE_DIR``), set in the environment or
passed in ``test_config`` (which also takes Flask settings such as TESTING).
"""
import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request
from werkzeug.datastructures import ImmutableMultiDict

from service import api, auth, body, errors, metrics, openapi, repository, v2, web
from service.config import load_config
from service.models import ModelRegistry

__all__ = ["create_app"]


class _OrderedParams(ImmutableMultiDict):
    """An ImmutableMultiDict that also remembers the order of all its items.

    A MultiDict groups values by key, so files uploaded under different field
    names (a, b, a) would come back as (a, a, b); ``in_order`` keeps the order of
    the request body, which is the order of the predictions."""

    def __init__(self, mapping=None):
        super().__init__(mapping)
        if isinstance(mapping, list):
            self.in_order = list(mapping)
        else:
            self.in_order = list(self.items(multi=True))


class ServiceRequest(Request):
    parameter_storage_class = _OrderedParams


class ServiceState:
    """Per-app resources, at ``app.extensions["cnn"]``."""

    def __init__(self, registry, metrics, body_budget):
        self.registry = registry
        self.metrics = metrics
        self.body_budget = body_budget


def _limit_blas_threads(threads, logger):
    """Cap BLAS (OpenBLAS used by NumPy/SciPy) to this worker's thread budget."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=threads, user_api="blas")
    except Exception as exc:  # noqa: BLE001 - a missing or odd BLAS only costs speed
        logger.warning("could not limit BLAS threads to %d: %s", threads, exc)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The Flask app: configuration, models of this process, blueprints, handlers."""
    app = Flask(__name__, static_folder=None)   # no static files: no /static route
    app.request_class = ServiceRequest
    settings, flask_settings = load_config(test_config)
    app.config.update(settings)
    app.config.update(flask_settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["CNN_MAX_CONTENT_LENGTH"]
    # bound multipart parsing: the image files plus a few stray fields
    app.config["MAX_FORM_PARTS"] = 2 * settings["CNN_MAX_IMAGES"] + 64
    app.json.sort_keys = False  # type: ignore[attr-defined]  # the default provider has it
    if app.logger.level == logging.NOTSET:
        app.logger.setLevel(logging.INFO)  # model loading is reported at INFO

    _limit_blas_threads(settings["CNN_THREADS"], app.logger)
    m = metrics.Metrics()
    registry = ModelRegistry(
        settings["CNN_MODEL_DIR"], default=settings["CNN_DEFAULT_MODEL"],
        backend=settings["CNN_BACKEND"], threads=settings["CNN_THREADS"], logger=app.logger,
        on_failure=lambda name: m.load_failures.labels(name).inc(),
        on_change=m.model_changed, state_dir=settings["CNN_STATE_DIR"],
        max_bytes=settings["CNN_MAX_MODEL_BYTES"]).load()
    m.models_loaded.set(registry.served_count)
    # after the fork (gunicorn calls create_app in each worker): one poller per worker
    registry.start_polling(settings["CNN_RELOAD_INTERVAL"])
    app.extensions["cnn"] = ServiceState(registry, m,
                                         body.BodyBudget(settings["CNN_WORKER_BODY_BYTES"]))

    errors.register(app)
    metrics.init_app(app)
    # In this order: an anonymous client is refused before its body is read.
    app.before_request(auth.check_token)
    app.before_request(body.read_body)
    app.teardown_request(body.release_body_bytes)

    @app.after_request
    def _security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    app.register_blueprint(web.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(repository.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    return app
