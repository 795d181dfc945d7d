"""Request bodies are read once, up front, with a size limit and a deadline.

Why not leave it to werkzeug: for a chunked body (no Content-Length) werkzeug
trusts the server to have ended the stream and cuts it at
``MAX_CONTENT_LENGTH`` without a word (a 100 MiB chunked upload was answered
200 on its first 16 MiB); a malformed chunk surfaces as the WSGI server's
parse exception from deep inside a view (a 500); and a client that announces
a body and then trickles it holds the request for as long as it likes.

:func:`read_body` runs before every view (``before_request``, after the
bearer-token check, so an anonymous client cannot make us read 16 MiB) and
turns each of those into an answer, whatever the transfer encoding:

* over ``CNN_MAX_CONTENT_LENGTH`` bytes -> 413 (a declared Content-Length is
  refused before reading; a chunked body as soon as it passes the limit);
* malformed framing (bad chunk size, missing terminator, the client closing
  mid-body) -> 400;
* not all there within ``CNN_BODY_TIMEOUT`` seconds -> 408.

After such an answer the worker reads and drops what the client still sends
for at most gunicorn's ``keepalive`` seconds (the socket timeout bounds each
read), then closes the connection: the client gets to read the answer. The
body read is put back in the WSGI environment as a plain
``Content-Length`` body, so werkzeug, Flask and the views see an ordinary
request and read it from memory.

The deadline is a ``gevent.Timeout`` under the gevent worker (a slow body
holds one greenlet, not a worker), and the connection's socket timeout is set
to the time left before each read (``environ["gunicorn.socket"]``). That
timeout stays set afterwards, so writing the answer to a client that never
reads it is bounded too.
"""
import io
import socket
import time

from flask import current_app, request

from service.errors import ApiError

CHUNK = 64 * 1024
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")

try:  # the parse errors of gunicorn's body readers (chunked framing, short bodies)
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # pragma: no cover - gunicorn is a dependency
    _ServerParseError = ()


class _Deadline:
    """The time limit on reading one body.

    gunicorn's body reader keeps calling ``recv`` until it has the size asked
    for, so a client sending a byte a second never lets a per-``recv`` socket
    timeout fire. Under gevent a ``gevent.Timeout`` interrupts the read at the
    deadline wherever it is; elsewhere (threaded workers) the socket timeout
    set before each read is the best available bound (between reads)."""

    def __init__(self, sock, seconds):
        self.sock = sock
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.timer = None

    def __enter__(self):
        try:
            from gevent import monkey
        except ImportError:
            return self
        if monkey.is_module_patched("socket"):
            import gevent
            self.timer = gevent.Timeout(self.seconds, TimeoutError)
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.close()
        return False

    def arm(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if self.sock is not None:
            self.sock.settimeout(left)


def _declared_length(environ):
    value = environ.get("CONTENT_LENGTH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ApiError(400, f"Content-Length must be a non-negative integer, got {value!r}")
    return int(value)


def read_body():
    """``before_request``: read the whole body within the limits (see the module docstring)."""
    environ = request.environ
    if request.method not in BODY_METHODS or environ.get("cnn.body_read"):
        return
    limit = current_app.config["CNN_MAX_CONTENT_LENGTH"]
    seconds = current_app.config["CNN_BODY_TIMEOUT"]
    length = _declared_length(environ)
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if length is not None and length > limit:
        raise _refuse(413, f"request body too large: {length:,} bytes declared, the limit is "
                           f"{limit:,} bytes (CNN_MAX_CONTENT_LENGTH)")
    if length is None and not chunked:
        body = b""
    else:
        body = _read(environ["wsgi.input"], length, limit, seconds,
                     environ.get("gunicorn.socket"))
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ.pop("wsgi.input_terminated", None)
    environ["cnn.body_read"] = True
    request.__dict__.pop("stream", None)   # werkzeug's cached stream, if anything made one


def _read(stream, length, limit, seconds, sock):
    """At most ``limit`` bytes of ``stream`` (``length`` of them if declared)."""
    want = limit + 1 if length is None else length
    parts, got = [], 0
    try:
        with _Deadline(sock, seconds) as deadline:
            while got < want:
                deadline.arm()
                block = stream.read(min(CHUNK, want - got))
                if not block:
                    break
                parts.append(block)
                got += len(block)
    except (TimeoutError, socket.timeout):
        raise _refuse(408, f"the request body did not arrive within {seconds:g} s "
                           f"(CNN_BODY_TIMEOUT)") from None
    except (OSError, ValueError, *_as_tuple(_ServerParseError)):
        raise _refuse(400, "the request body is malformed: bad chunked encoding or the "
                           "connection ended before the whole body was sent") from None
    if sock is not None:   # the answer gets the whole timeout again (see the docstring)
        sock.settimeout(seconds)
    if length is None and got > limit:
        raise _refuse(413, f"request body too large: the limit is {limit:,} bytes "
                           f"(CNN_MAX_CONTENT_LENGTH)")
    if length is not None and got < length:
        raise _refuse(400, f"the request body ended after {got:,} of the {length:,} bytes "
                           f"its Content-Length announced")
    return b"".join(parts)


def _as_tuple(errors):
    return errors if isinstance(errors, tuple) else (errors,)


def _refuse(status, message):
    """The ApiError to raise; the views will see an empty body."""
    request.environ["wsgi.input"] = io.BytesIO(b"")
    request.environ["CONTENT_LENGTH"] = "0"
    request.environ.pop("HTTP_TRANSFER_ENCODING", None)
    request.environ["cnn.body_read"] = True
    return ApiError(status, message)
