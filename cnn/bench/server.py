"""Starting and stopping the real gunicorn of a benchmark (loopback only).

``start`` runs the service with the settings file the package ships (the one
``cnn serve`` runs, cnn.serve.settings_path), so a benchmark needs no checkout.
Its workers import the same ``service`` this process finds: the folder holding
it goes first on their PYTHONPATH (a checkout that is not installed, or the
installed package). gunicorn gets its own session: Ctrl-C reaches the
benchmark, which then stops gunicorn gracefully (``stop``).
"""
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cnn.serve import APP, settings_path


def free_port():
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_env(port, model_dir, workers=None, drop=(), **settings):
    """The environment of a benchmark's gunicorn: the caller's, bound to
    127.0.0.1:``port``, serving ``model_dir``, without the ``drop`` variables
    (settings of the caller's shell that would change what is measured), plus
    ``settings`` (e.g. CNN_RELOAD_INTERVAL="2")."""
    env = {name: value for name, value in os.environ.items() if name not in drop}
    env.update(CNN_BIND=f"127.0.0.1:{port}", CNN_MODEL_DIR=str(model_dir),
               **{name: str(value) for name, value in settings.items()})
    if workers:
        env["CNN_WORKERS"] = str(workers)
    service_root = str(Path(settings_path()).parents[1])    # <root>/service/gunicorn.conf.py
    env["PYTHONPATH"] = os.pathsep.join(
        [service_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def gunicorn_command(*flags):
    """``python -m gunicorn -c <packaged settings> [flags] service:create_app()``."""
    return [sys.executable, "-m", "gunicorn", "-c", settings_path(), *flags, APP]


def start(env, *flags, stdout=None, stderr=None):
    """gunicorn (a Popen) with ``env`` (see gunicorn_env) in its own session."""
    return subprocess.Popen(gunicorn_command(*flags), env=env, stdout=stdout, stderr=stderr,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_ready(port, proc, timeout):
    """Return once GET /ready answers 200; RuntimeError if gunicorn exits or
    ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn not ready within {timeout} s")
        time.sleep(0.2)


def stop(proc, timeout=30):
    """SIGTERM (a graceful stop), then SIGKILL to the whole group after
    ``timeout``. Returns gunicorn's exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode
