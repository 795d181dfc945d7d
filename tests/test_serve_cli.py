"""``cnn serve`` and the packaged gunicorn settings (service/gunicorn.conf.py).

The settings file ships as package data so an installed wheel serves without a
checkout; the root gunicorn.conf.py only runs it. One test starts a real server
through ``python -m cnn serve`` (a 1-worker gunicorn, a few seconds).
"""
import os
import runpy
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cnn.architectures import build_architecture
from cnn.io import save_model
from tests.service.servers import free_port, request

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "service" / "gunicorn.conf.py"
SHIM = ROOT / "gunicorn.conf.py"
READY_TIMEOUT = 20


def run_cnn(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cnn", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_serve_is_listed_and_has_help():
    listing = run_cnn("--help")
    assert listing.returncode == 0 and "serve" in listing.stdout, listing.stdout
    help_ = run_cnn("serve", "--help")
    assert help_.returncode == 0, help_.stderr
    for flag in ("--bind", "--workers", "--models"):
        assert flag in help_.stdout, help_.stdout


@pytest.mark.parametrize("args,word", [(["--bind", "nope"], "--bind"),
                                       (["--bind", "h:99999"], "--bind"),
                                       (["--workers", "0"], "--workers"),
                                       (["--models", "/no/such/folder"], "--models")])
def test_serve_rejects_bad_arguments(args, word):
    proc = run_cnn("serve", *args)
    assert proc.returncode == 2, proc.stderr
    assert word in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_serve_maps_flags_to_the_environment(monkeypatch, tmp_path):
    from cnn.serve import gunicorn_command
    monkeypatch.setenv("CNN_WORKERS", "7")
    command, env = gunicorn_command(["--bind", "127.0.0.1:9001", "--models", str(tmp_path)])
    assert command[1:] == ["-m", "gunicorn", "-c", str(PACKAGED), "service:create_app()"]
    assert env["CNN_BIND"] == "127.0.0.1:9001" and env["CNN_MODEL_DIR"] == str(tmp_path)
    assert env["CNN_WORKERS"] == "7"          # a flag not given leaves the environment


def _settings(namespace):
    """Comparable view of a settings module's globals: functions by code."""
    def comparable(value):
        if isinstance(value, types.FunctionType):
            return (value.__name__, value.__code__.co_code, value.__code__.co_consts)
        return value
    return {k: comparable(v) for k, v in namespace.items()
            if not k.startswith("__") and not isinstance(v, types.ModuleType)}


def test_root_shim_gives_the_packaged_settings(monkeypatch):
    monkeypatch.setenv("CNN_WORKERS", "3")
    packaged = _settings(runpy.run_path(str(PACKAGED)))
    shim = _settings(runpy.run_path(str(SHIM)))
    assert {"bind", "workers", "worker_class", "post_fork", "on_starting"} <= packaged.keys()
    assert {k: shim.get(k) for k in packaged} == packaged
    assert packaged["workers"] == 3


def test_package_data_ships_the_settings_file():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "service" in setuptools_cfg["packages"]
    assert "gunicorn.conf.py" in setuptools_cfg["package-data"]["service"]


def test_cnn_serve_answers_health_and_stops_on_sigterm(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    model = build_architecture("conv4k3p1-relu-maxpool2-flatten-dense10")
    model.build(seed=0)
    save_model(models / "tiny.npz", model)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), CNN_THREADS="1")
    for name in ("CNN_BIND", "CNN_WORKERS", "CNN_MODEL_DIR", "CNN_API_TOKEN",
                 "GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        # cwd is not the checkout: the settings must come from the package
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnn", "serve", "--bind", f"127.0.0.1:{port}",
             "--models", str(models), "--workers", "1"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        status = None
        while status != 200:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, (f"no /health in {READY_TIMEOUT}s:\n"
                                                 f"{log.read_text()}")
            try:
                status, _, _ = request(port, "GET", "/health", timeout=2)
            except OSError:
                time.sleep(0.2)
        # --models was served
        status, _, body = request(port, "GET", "/models")
        assert status == 200 and "tiny" in str(body), body
        proc.send_signal(signal.SIGTERM)   # cnn serve became the gunicorn master (exec)
        assert proc.wait(timeout=30) == 0, log.read_text()
        # post_fork of the packaged settings ran, with the --workers given
        assert "kernel threads (1 workers" in log.read_text(), log.read_text()
    finally:
        # the whole session: a gunicorn left behind by a failed test is killed too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
