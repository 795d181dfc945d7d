"""Slow and idle connections against a running service: do other clients still get answers?

    python benchmarks/slow_clients.py --port 8000 [--slow 50] [--kind mixed] [--duration 20]

Opens ``--slow`` connections to 127.0.0.1:PORT that misbehave the way a slowloris
client or a stalled upload does, then, for ``--duration`` seconds, asks
``/health`` and ``/predict`` (one 28x28 image as an ``application/x-npy``
body) from fresh connections every ``--interval`` seconds, each with a
``--probe-timeout`` client timeout. Prints one table row per probe endpoint
(answered / asked, median and worst latency) and one for the slow connections
(how many the server closed, and after how long).

Kinds of slow connection (``mixed``: a third of each):

* ``header``: a request line, then one header line every 2 s, never finishing;
* ``body``:   complete headers announcing a 1 MB body, then one byte every 2 s;
* ``idle``:   connects and sends nothing.

Loopback only, bounded: the script refuses any host but 127.0.0.1/localhost,
opens at most 500 connections and stops after ``--duration`` seconds.
"""
import argparse
import http.client
import io
import socket
import statistics
import threading
import time

import numpy as np

KINDS = ("header", "body", "idle")
TRICKLE_EVERY = 2.0


def npy_body():
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 28, 28), np.uint8))
    return buf.getvalue()


class SlowConnection(threading.Thread):
    """One misbehaving client; records when (if ever) the server closed it."""

    def __init__(self, host, port, kind, stop):
        super().__init__(daemon=True)
        self.host, self.port, self.kind, self.stop = host, port, kind, stop
        self.opened = None
        self.closed_after = None
        self.reply = b""      # what the server sent before closing (an error answer)

    def _send(self, sock, data):
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False

    def status(self):
        """The status code of the server's answer, or None."""
        head = self.reply.split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) >= 2 and head[1].isdigit() else None

    def run(self):
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5)
        except OSError:
            self.closed_after = 0.0
            return
        self.opened = time.monotonic()
        sock.settimeout(0.2)
        if self.kind == "header":
            first = b"POST /predict HTTP/1.1\r\nHost: x\r\n"
        elif self.kind == "body":
            first = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        else:
            first = b""
        alive = self._send(sock, first) if first else True
        next_send = time.monotonic() + TRICKLE_EVERY
        n = 0
        while alive and not self.stop.is_set():
            try:
                data = sock.recv(65536)
                if data == b"":   # the server closed the connection
                    alive = False
                    break
                self.reply += data[:4096]
            except socket.timeout:
                pass
            except OSError:
                alive = False
                break
            if self.kind != "idle" and time.monotonic() >= next_send:
                n += 1
                data = f"X-Slow-{n}: {n}\r\n".encode() if self.kind == "header" else b"\0"
                alive = self._send(sock, data)
                next_send += TRICKLE_EVERY
        if not alive:
            self.closed_after = time.monotonic() - self.opened
        sock.close()


def probe(host, port, path, body, timeout):
    """(ok, seconds) of one request on a fresh connection."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/x-npy"} if body is not None else {}
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200, time.monotonic() - t0
    except OSError:
        return False, time.monotonic() - t0
    finally:
        conn.close()


def run(host, port, slow, kind, duration, interval, probe_timeout, token=None):
    """A dict of results; see the module docstring."""
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("slow_clients.py: loopback addresses only")
    if not 0 <= slow <= 500:
        raise SystemExit("slow_clients.py: --slow must be 0..500")
    stop = threading.Event()
    kinds = [KINDS[i % 3] if kind == "mixed" else kind for i in range(slow)]
    conns = [SlowConnection(host, port, k, stop) for k in kinds]
    for c in conns:
        c.start()
    time.sleep(1.0)   # let them all connect and start stalling
    body = npy_body()
    results = {"/health": [], "/predict": []}
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for path, data in (("/health", None), ("/predict", body)):
            results[path].append(probe(host, port, path, data, probe_timeout))
        time.sleep(interval)
    stop.set()
    for c in conns:
        c.join(timeout=2)
    return {"probes": results, "slow": conns}


def table(res, slow, kind, duration):
    rows = []
    for path, got in res["probes"].items():
        times = [t for ok, t in got if ok]
        ok = len(times)
        med = statistics.median(times) if times else float("nan")
        worst = max(t for _, t in got) if got else float("nan")
        rows.append(f"{path:<10} {ok:>4}/{len(got):<4} answered 200   median {med * 1000:8.1f} ms"
                    f"   worst {worst * 1000:8.1f} ms")
    closed = [c.closed_after for c in res["slow"] if c.closed_after is not None]
    by_kind = {}
    for c in res["slow"]:
        by_kind.setdefault(c.kind, []).append(c.closed_after)
    parts = []
    for k, vals in by_kind.items():
        shut = [v for v in vals if v is not None]
        when = f" after {statistics.median(shut):.1f} s (median)" if shut else ""
        parts.append(f"{k}: {len(shut)}/{len(vals)} closed by the server{when}")
    head = f"{slow} slow connections ({kind}) held for {duration:.0f} s"
    return "\n".join([head] + rows + ["slow:      " + "; ".join(parts) if parts else ""]), closed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--slow", type=int, default=50)
    p.add_argument("--kind", choices=KINDS + ("mixed",), default="mixed")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--probe-timeout", type=float, default=5.0)
    a = p.parse_args(argv)
    if not 0 < a.duration <= 600:
        raise SystemExit("slow_clients.py: --duration must be in (0, 600] seconds")
    res = run(a.host, a.port, a.slow, a.kind, a.duration, a.interval, a.probe_timeout)
    print(table(res, a.slow, a.kind, a.duration)[0])


if __name__ == "__main__":
    main()
