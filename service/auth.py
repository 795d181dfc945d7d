"""Optional bearer-token authentication, as TorchServe's token authorisation.

With ``CNN_API_TOKEN`` set, every request needs ``Authorization: Bearer
<token>``, except the health endpoints (``/health``, ``/ready``,
``/v2/health/live``, ``/v2/health/ready``: load balancers and orchestrators
probe them without credentials) and ``/openapi.json`` (the description of the
API is not a secret), for GET and HEAD. A missing or wrong token is answered 401 with
``WWW-Authenticate: Bearer`` before the body is read. Unset (the default),
the service is open, and relies on its bind address (loopback unless told
otherwise, see gunicorn.conf.py) or a proxy to restrict callers.

The comparison is constant-time (``hmac.compare_digest``), so the answer time
does not tell how much of a guess was right.
"""
import hmac

from flask import current_app, request

from service.errors import ApiError

OPEN_PATHS = frozenset(("/health", "/ready", "/v2/health/live", "/v2/health/ready",
                        "/openapi.json"))


def check_token():
    """``before_request``: 401 unless the request carries the configured token."""
    token = current_app.config.get("CNN_API_TOKEN")
    if not token or (request.path in OPEN_PATHS and request.method in ("GET", "HEAD")):
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "authentication required: send the header "
                            "'Authorization: Bearer <token>' (CNN_API_TOKEN)",
                       headers={"WWW-Authenticate": 'Bearer realm="cnn"'})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "invalid bearer token",
                       headers={"WWW-Authenticate": 'Bearer realm="cnn", error="invalid_token"'})
