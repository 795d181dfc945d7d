"""Every error is JSON: ``{"error": "<what went wrong>", ...}`` with its status.

* :class:`ApiError` is raised by the views for bad requests (400, 401, 404,
  408, 413, 415, 503); ``headers`` go on the answer (``WWW-Authenticate`` on
  401) and extra keyword arguments are added to the body (``errors`` for the
  per-image list of ``/predict``).
* Werkzeug's HTTP exceptions (unknown URL 404, wrong method 405 with its
  ``Allow`` header, body over ``MAX_CONTENT_LENGTH`` 413, ...) get the same shape.
* Anything else is a bug in the service: it is logged with its traceback and
  answered ``500 {"error": "internal server error"}`` (no details leak).
"""
from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge


class ApiError(Exception):
    def __init__(self, status, message, headers=None, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def error_response(status, message, headers=None, **extra):
    response = jsonify({"error": message, **extra})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def handle_api_error(exc):
    return error_response(exc.status, exc.message, exc.headers, **exc.extra)


def handle_http_exception(exc):
    message = exc.description or exc.name
    if isinstance(exc, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        length = request.content_length
        if limit is not None and (length is None or length > limit):
            message = (f"request body too large: the limit is {limit:,} bytes "
                       f"(CNN_MAX_CONTENT_LENGTH)")
        else:
            message = ("request too large: too many parts or too large a form field in "
                       "the multipart body")
    headers = {}
    # keep headers that carry meaning (Allow on 405, Retry-After, WWW-Authenticate)
    for key, value in exc.get_headers():
        if key.lower() != "content-type":
            headers[key] = value
    return error_response(exc.code or 500, message, headers)


def handle_unexpected(exc):
    if isinstance(exc, HTTPException):  # pragma: no cover - routed to its own handler
        return handle_http_exception(exc)
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal server error")


def register(app):
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
