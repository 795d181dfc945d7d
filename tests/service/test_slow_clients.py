"""Slow clients and request-body framing against real gunicorn (gunicorn.conf.py).

One server for the module, with short timeouts so the test is quick:
``CNN_KEEPALIVE=2`` (seconds to send a request's headers) and
``CNN_BODY_TIMEOUT=3`` (seconds to send its body), a 1 MiB body limit.
Loopback only; every connection is bounded in time (benchmarks/slow_clients.py
stops after its duration; raw sockets have timeouts).
"""
import importlib.util
import json
import socket
import time

import pytest

from tests.service.helpers import npy_batch
from tests.service.servers import ROOT, gunicorn, request

KEEPALIVE, BODY_TIMEOUT, LIMIT = 2, 3, 1024 * 1024


def _load_slow_clients():
    spec = importlib.util.spec_from_file_location(
        "slow_clients", ROOT / "benchmarks" / "slow_clients.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_weights):
    models = tmp_path_factory.mktemp("slow-models")
    (models / "tiny.npz").write_bytes(tiny_weights.read_bytes())
    with gunicorn(models, tmp_path_factory.mktemp("slow-logs"), CNN_WORKERS="2",
                  CNN_KEEPALIVE=str(KEEPALIVE), CNN_BODY_TIMEOUT=str(BODY_TIMEOUT),
                  CNN_MAX_CONTENT_LENGTH=str(LIMIT)) as info:
        yield info


def raw_exchange(port, data, timeout=10, shut_write=False):
    """Send ``data`` on a new connection and return everything answered until close
    or ``timeout`` (sending stops quietly if the server stops reading)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                block = sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not block:
                break
            got += block
            if b"\r\n\r\n" in got and b'"error"' in got:
                break
    return got


def status_of(reply):
    head = reply.split(b"\r\n", 1)[0].split()
    assert len(head) >= 2, reply[:200]
    return int(head[1])


def chunked(body, size=64 * 1024):
    out = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
           for i in range(0, len(body), size)]
    return b"".join(out) + b"0\r\n\r\n"


def test_fifty_slow_connections_leave_the_service_answering(server):
    slow = _load_slow_clients()
    res = slow.run("127.0.0.1", server["port"], slow=50, kind="mixed", duration=6.0,
                   interval=0.2, probe_timeout=1.0)
    for path, probes in res["probes"].items():
        assert len(probes) >= 5
        late = [round(t, 3) for ok, t in probes if not ok or t >= 1.0]
        assert not late, f"{path}: {len(late)} of {len(probes)} probes failed or took >= 1 s"
    conns = res["slow"]
    assert len(conns) == 50 and all(c.opened is not None for c in conns)
    # headers trickling or nothing sent: dropped after the keepalive timer
    for c in conns:
        if c.kind in ("header", "idle"):
            assert c.closed_after is not None, f"{c.kind} connection never dropped"
            assert KEEPALIVE - 0.5 <= c.closed_after <= KEEPALIVE + 2, c.closed_after
    # a body trickling: answered 408 after CNN_BODY_TIMEOUT, then dropped
    bodies = [c for c in conns if c.kind == "body"]
    assert bodies and all(c.status() == 408 for c in bodies), [c.reply[:80] for c in bodies]
    assert all(c.closed_after is not None and
               BODY_TIMEOUT - 0.5 <= c.closed_after <= BODY_TIMEOUT + KEEPALIVE + 2
               for c in bodies), [c.closed_after for c in bodies]


def test_malformed_chunked_body_is_400(server):
    reply = raw_exchange(server["port"],
                         b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n")
    assert status_of(reply) == 400, reply[:300]
    assert b"malformed" in reply


def test_chunked_body_over_the_limit_is_413(server):
    body = b"\0" * (3 * LIMIT)
    reply = raw_exchange(server["port"],
                         b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy"
                         b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body))
    assert status_of(reply) == 413, reply[:300]
    assert b"CNN_MAX_CONTENT_LENGTH" in reply


def test_declared_length_over_the_limit_is_413_before_the_body(server):
    start = time.monotonic()
    reply = raw_exchange(server["port"],
                         b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy"
                         b"\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
    assert status_of(reply) == 413, reply[:300]
    assert time.monotonic() - start < BODY_TIMEOUT   # not after waiting for the body


def test_body_shorter_than_its_content_length_is_400(server):
    reply = raw_exchange(server["port"],
                         b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy"
                         b"\r\nContent-Length: 1000\r\n\r\n" + b"\0" * 10, shut_write=True)
    assert status_of(reply) == 400, reply[:300]
    assert b"10 of the 1,000 bytes" in reply


def test_chunked_body_within_the_limit_is_classified_like_a_plain_one(server):
    body = npy_batch(3)
    plain = request(server["port"], "POST", "/predict", body,
                    {"Content-Type": "application/x-npy"})
    reply = raw_exchange(server["port"],
                         b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy"
                         b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                         + chunked(body, size=1000))
    assert plain[0] == 200 and status_of(reply) == 200, reply[:300]
    answer = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert answer["predictions"] == plain[2]["predictions"]
