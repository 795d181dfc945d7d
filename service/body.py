"""Request bodies are read once, up front, with a size limit and a deadline.

Why not leave it to werkzeug: for a chunked body (no Content-Length) werkzeug
trusts the server to have ended the stream and cuts it at
``MAX_CONTENT_LENGTH`` without a word (a 100 MiB chunked upload was answered
200 on its first 16 MiB); a malformed chunk surfaces as the WSGI server's
parse exception from deep inside a view (a 500); and a client that announces
a body and then trickles it holds the request for as long as it likes.

:func:`read_body` runs before every view (``before_request``, after the
bearer-token check, so an anonymous client cannot make us read a body) and
turns each of those into an answer, whatever the transfer encoding:

* over ``CNN_MAX_CONTENT_LENGTH`` bytes -> 413 (a declared Content-Length is
  refused before reading; a chunked body as soon as it passes the limit);
* malformed framing (bad chunk size, missing terminator, the client closing
  mid-body) -> 400;
* not all there within ``CNN_BODY_TIMEOUT`` seconds -> 408;
* more than ``CNN_WORKER_BODY_BYTES`` bytes of bodies held by this worker's
  requests at once -> 503 with ``Retry-After`` (see :class:`BodyBudget`).

After a refusal the worker reads and drops what the client still sends
for at most gunicorn's ``keepalive`` seconds (the socket timeout bounds each
read), then closes the connection: the client gets to read the answer.
Otherwise the body read is put back in the WSGI environment as a plain
``Content-Length`` body, so werkzeug, Flask and the views see an ordinary
request and read it from memory.

A body sent with ``Content-Encoding: gzip`` (or ``x-gzip``) or ``deflate``
(zlib, or raw deflate as some clients send it) is decompressed here, so the
views see the plain body: ``CNN_MAX_CONTENT_LENGTH`` bounds the decompressed
size too, and a body that would inflate past it is refused (413) after
inflating at most that many bytes (``zlib.decompressobj`` with
``max_length``: a gzip bomb is never inflated in full). Bad compressed data
is 400, another coding 415. The inflating runs off the event loop
(service.offload) and its bytes count against the worker's budget.

A request to an unknown URL or with a method the URL does not take (404, 405)
has its body left unread, so neither those nor the open paths of
service.auth make the server read anything for an anonymous client.

The deadline is a ``gevent.Timeout`` under the gevent worker (a slow body
holds one greenlet, not a worker), and the connection's socket timeout is set
to the time left before each read (``environ["gunicorn.socket"]``). That
timeout stays set afterwards, so writing the answer to a client that never
reads it is bounded too.
"""
import io
import socket
import threading
import time
import zlib

from flask import current_app, request

from service.errors import ApiError
from service.offload import run_blocking

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


class BodyBudget:
    """Bytes of request bodies a worker holds at once, across its requests.

    Under the gevent worker a process serves up to ``worker_connections``
    requests at once, and each may hold a body of up to
    CNN_MAX_CONTENT_LENGTH until its answer is sent (a queued request waits
    for the forward pass with its body and batch in memory): 1000 clients
    sending 16 MiB would hold 16 GB. Bytes are counted as they arrive, not as
    declared, so clients trickling their bodies (which hold nothing) cannot
    use the budget up; a request whose next block would take the total over
    the limit is answered 503 with ``Retry-After`` and its bytes given back.
    The counter is only touched from the worker's event loop (or under a lock
    in a threaded server)."""

    def __init__(self, limit):
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n):
        with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            return True

    def give(self, n):
        with self._lock:
            self.held -= n


def release_body_bytes(exc=None):
    """``teardown_request``: give this request's body bytes back to the budget."""
    taken = request.environ.pop("cnn.body_bytes", 0)
    if taken:
        current_app.extensions["cnn"].body_budget.give(taken)


def _declared_length(environ):
    value = environ.get("CONTENT_LENGTH", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise ApiError(400, f"Content-Length must be a non-negative integer, got {value!r}")
    return int(value)


def read_body():
    """``before_request``: read the whole body within the limits (see the module docstring)."""
    environ = request.environ
    if request.method not in BODY_METHODS or environ.get("cnn.body_read"):
        return
    if request.routing_exception is not None:   # 404 / 405: nothing will read it
        _empty_body()
        return
    limit = current_app.config["CNN_MAX_CONTENT_LENGTH"]
    seconds = current_app.config["CNN_BODY_TIMEOUT"]
    length = _declared_length(environ)
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    coding = environ.pop("HTTP_CONTENT_ENCODING", "").strip().lower()
    if coding not in ("", "identity", *_CODINGS):
        raise _refuse(415, f"unsupported Content-Encoding {coding!r}: send the body as is, "
                           f"or compressed with gzip or deflate")
    if length is not None and length > limit:
        raise _refuse(413, f"request body too large: {length:,} bytes declared, the limit is "
                           f"{limit:,} bytes (CNN_MAX_CONTENT_LENGTH)")
    if length is None and not chunked:
        body = b""
    else:
        body = _read(environ["wsgi.input"], length, limit, seconds,
                     environ.get("gunicorn.socket"), current_app.extensions["cnn"].body_budget)
    if coding in _CODINGS:
        body = _decoded(body, coding, limit, current_app.extensions["cnn"].body_budget)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ.pop("wsgi.input_terminated", None)
    environ["cnn.body_read"] = True
    request.__dict__.pop("stream", None)   # werkzeug's cached stream, if anything made one


def _read(stream, length, limit, seconds, sock, budget):
    """At most ``limit`` bytes of ``stream`` (``length`` of them if declared),
    each block counted against ``budget`` (given back at teardown)."""
    want = limit + 1 if length is None else length
    parts, got = [], 0
    try:
        with _Deadline(sock, seconds) as deadline:
            while got < want:
                deadline.arm()
                block = stream.read(min(CHUNK, want - got))
                if not block:
                    break
                if not budget.take(len(block)):
                    raise _refuse(503, "the server is busy: too many request bodies in "
                                       "memory at once (CNN_WORKER_BODY_BYTES); retry shortly",
                                  headers={"Retry-After": "1"})
                request.environ["cnn.body_bytes"] = \
                    request.environ.get("cnn.body_bytes", 0) + len(block)
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


# Content-Encoding -> zlib wbits (gzip header; zlib header, as RFC 9110's
# "deflate" and Triton's clients send it)
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
            "deflate": zlib.MAX_WBITS}


def _decoded(body, coding, limit, budget):
    """The decompressed ``body``, at most ``limit`` bytes of it (else 413);
    its bytes replace the compressed ones in the worker's budget."""
    if not body:
        return body
    try:
        plain = run_blocking(_inflate, body, _CODINGS[coding], limit)
    except zlib.error as exc:
        raise _refuse(400, f"the request body is not valid {coding} data "
                           f"(Content-Encoding: {coding}): {exc}") from None
    if plain is None:
        raise _refuse(413, f"request body too large: more than {limit:,} bytes once "
                           f"decompressed (CNN_MAX_CONTENT_LENGTH applies to the "
                           f"decompressed body too)")
    if not budget.take(len(plain)):
        raise _refuse(503, "the server is busy: too many request bodies in memory at once "
                           "(CNN_WORKER_BODY_BYTES); retry shortly",
                      headers={"Retry-After": "1"})
    budget.give(len(body))
    request.environ["cnn.body_bytes"] += len(plain) - len(body)
    return plain


def _inflate(data, wbits, limit):
    """``data`` decompressed, or None when that is more than ``limit`` bytes
    (found after inflating at most limit + 1 of them); zlib.error when the data
    is malformed or cut short. Concatenated gzip members are read in turn."""
    out = []
    room = limit
    while True:
        try:
            inflater = zlib.decompressobj(wbits)
            block = inflater.decompress(data, room + 1)
        except zlib.error:
            if wbits != zlib.MAX_WBITS or out:
                raise
            wbits = -zlib.MAX_WBITS          # raw deflate, without the zlib header
            continue
        room -= len(block)
        if room < 0:
            return None
        out.append(block)
        if not inflater.eof:
            raise zlib.error("the compressed data ends before its end marker")
        data = inflater.unused_data
        if not data.startswith(b"\x1f\x8b") or wbits != 16 + zlib.MAX_WBITS:
            break                            # (another gzip member starts with its magic)
    if data:
        raise zlib.error(f"{len(data):,} bytes of other data after the compressed data")
    return b"".join(out)


def _as_tuple(errors):
    return errors if isinstance(errors, tuple) else (errors,)


def _refuse(status, message, headers=None):
    """The ApiError to raise; the views will see an empty body."""
    _empty_body()
    return ApiError(status, message, headers=headers)


def _empty_body():
    request.environ["wsgi.input"] = io.BytesIO(b"")
    request.environ["CONTENT_LENGTH"] = "0"
    request.environ.pop("HTTP_TRANSFER_ENCODING", None)
    request.environ["cnn.body_read"] = True
    request.__dict__.pop("stream", None)
