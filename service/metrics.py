"""Prometheus metrics, served at ``GET /metrics`` in the text exposition format.

=====================================  =========  ==========================================
``cnn_http_requests_total``            counter    requests by ``endpoint`` (the URL rule,
                                                  e.g. ``/v2/models/<name>/infer``;
                                                  ``<unmatched>`` for unknown URLs and
                                                  wrong methods), ``method``, ``status``
``cnn_http_request_duration_seconds``  histogram  latency by ``endpoint``
``cnn_images_per_request``             histogram  batch size of successful predictions,
                                                  by ``endpoint``
``cnn_batch_images``                   histogram  images in each forward pass, by ``model``
                                                  (service.batching)
``cnn_batch_requests``                 histogram  requests merged into each forward pass,
                                                  by ``model``
``cnn_predictions_total``              counter    images classified, by ``model`` and
                                                  predicted ``class``
``cnn_model_load_failures_total``      counter    weights files that failed to load, by
                                                  ``model``
``cnn_models_loaded``                  gauge      model versions this worker serves
``cnn_model_reloads_total``            counter    changes of the served models after start
                                                  (service.models' hot reload and the
                                                  repository API), by ``model`` and
                                                  ``change``: added, replaced, removed,
                                                  unloaded
=====================================  =========  ==========================================

Each app has its own CollectorRegistry, so tests can create many apps in one
process. Under gunicorn every worker has its own counters; to export the sum
over workers, start gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set to an empty
folder (and call ``prometheus_client.multiprocess.mark_process_dead(pid)`` in the
``child_exit`` hook): the values are then kept in that folder and ``/metrics``
reports all workers together (prometheus_client's multiprocess mode).
"""
import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

bp = Blueprint("metrics", __name__)

IMAGE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cnn_http_requests", "HTTP requests by endpoint, method and "
                                "status", ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("cnn_http_request_duration_seconds", "HTTP request latency "
                                 "by endpoint", ["endpoint"], registry=r)
        self.images = Histogram("cnn_images_per_request", "Images in each successful "
                                "prediction request", ["endpoint"], buckets=IMAGE_BUCKETS,
                                registry=r)
        self.batch_images = Histogram("cnn_batch_images", "Images in each forward pass",
                                      ["model"], buckets=IMAGE_BUCKETS, registry=r)
        self.batch_requests = Histogram("cnn_batch_requests", "Requests merged into each "
                                        "forward pass", ["model"], buckets=IMAGE_BUCKETS,
                                        registry=r)
        self.predictions = Counter("cnn_predictions", "Images classified, by model and "
                                   "predicted class", ["model", "class"], registry=r)
        self.load_failures = Counter("cnn_model_load_failures", "Weights files that failed "
                                     "to load", ["model"], registry=r)
        self.models_loaded = Gauge("cnn_models_loaded", "Model versions served by this "
                                   "worker", registry=r, multiprocess_mode="livemax")
        self.reloads = Counter("cnn_model_reloads", "Changes of the served models after "
                               "start, by model and change (added, replaced, removed, "
                               "unloaded)", ["model", "change"], registry=r)

    def model_changed(self, name, change, loaded):
        """service.models' on_change: count the change, update the gauge."""
        self.reloads.labels(name, change).inc()
        self.models_loaded.set(loaded)

    def record_predictions(self, endpoint, model_name, class_names, labels):
        self.images.labels(endpoint).observe(len(labels))
        counts = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            self.predictions.labels(model_name, class_names[label]).inc(n)

    def record_pass(self, served, images, requests):
        """service.batching's on_pass: one forward pass of ``requests`` requests."""
        self.batch_images.labels(served.name).observe(images)
        self.batch_requests.labels(served.name).observe(requests)

    def exposition(self):
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _endpoint():
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def _start_timer():
    g.cnn_started = time.perf_counter()


def _observe(response):
    metrics = current_app.extensions["cnn"].metrics
    endpoint = _endpoint()
    metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
    started = g.get("cnn_started")
    if started is not None:
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    return response


def init_app(app):
    app.before_request(_start_timer)
    app.after_request(_observe)


@bp.get("/metrics")
def metrics_view():
    body = current_app.extensions["cnn"].metrics.exposition()
    return Response(body, content_type=CONTENT_TYPE_LATEST)
