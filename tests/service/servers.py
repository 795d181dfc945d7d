"""Real gunicorn servers for tests: started with the project's gunicorn.conf.py
on a free 127.0.0.1 port, ready within READY_TIMEOUT, stopped (SIGTERM, then
SIGKILL of the group) within STOP_TIMEOUT."""
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cnn.bench.server import stop

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30     # seconds for gunicorn + its workers to load the model
STOP_TIMEOUT = 30      # seconds for a graceful SIGTERM shutdown


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=30):
    """(status, headers, parsed JSON or raw bytes) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        return resp.status, dict(resp.getheaders()), data
    finally:
        conn.close()


def read_log(path):
    return Path(path).read_text(errors="replace") if Path(path).exists() else ""


@contextlib.contextmanager
def gunicorn(models_dir, logs, **env_extra):
    """Yield {"proc", "port", "stdout", "stderr"} of a ready server of ``models_dir``.

    ``env_extra`` sets service variables (CNN_WORKERS="2", CNN_KEEPALIVE="2", ...)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), CNN_BIND=f"127.0.0.1:{port}",
               CNN_MODEL_DIR=str(models_dir))
    for name in ("CNN_THREADS", "CNN_DEFAULT_MODEL", "PROMETHEUS_MULTIPROC_DIR",
                 "GUNICORN_CMD_ARGS", "CNN_API_TOKEN"):
        env.pop(name, None)
    env.update(env_extra)
    logs = Path(logs)
    stdout, stderr = logs / "stdout.log", logs / "stderr.log"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "service:create_app()"],
            cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            start_new_session=True)
    info = {"proc": proc, "port": port, "stdout": stdout, "stderr": stderr}
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {proc.returncode} before it was "
                                   f"ready:\n{read_log(stderr)}")
            try:
                status, _, body = request(port, "GET", "/ready", timeout=2)
                last = (status, body)
                if status == 200:
                    break
            except OSError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready within {READY_TIMEOUT}s (last "
                                   f"answer: {last!r}):\n{read_log(stderr)}")
            time.sleep(0.2)
        yield info
    finally:
        stop(proc, STOP_TIMEOUT)
