"""The cnn.bench package as an installed user meets it: its commands run from
any folder, the HTTP row and the peers' children run package modules (never a
script of a checkout), and the gunicorn helper the benchmarks share starts the
packaged settings and always stops what it started.

Fast: no benchmark runs; the children are ``--help`` or a one-line function.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cnn._threads
from cnn.bench import peers, serve, server, targets
from cnn.serve import settings_path

REPO = Path(__file__).resolve().parents[1]


def run(args, cwd):
    """``python args`` in ``cwd`` with the repository importable, as an
    installed package would be (the checkout is not the working folder)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("module, words", [
    ("cnn.bench", ["usage: python -m cnn.bench", "kernels", "train"]),
    ("cnn.bench.serve", ["usage: python -m cnn.bench.serve", "--json", "--format"]),
])
def test_module_help_from_outside_the_checkout(module, words, tmp_path):
    proc = run(["-m", module, "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for word in words:
        assert word in proc.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_benchmark_scripts_run_from_any_folder(script, tmp_path):
    """No script needs the checkout on sys.path or as its working folder."""
    proc = run([str(REPO / "benchmarks" / script), "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_http_row_runs_the_package_module(monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        line = json.dumps({"http_images_per_s": 700.0, "inprocess_images_per_s": 1000.0})
        return subprocess.CompletedProcess(cmd, 0, stdout=f"table\n{line}\n", stderr="")
    monkeypatch.setattr(targets.subprocess, "run", fake_run)
    row = targets.row_http(requests=3, seconds=1)
    assert len(calls) == 1             # the package's own module: no --help probe
    assert calls[0][:3] == [sys.executable, "-m", "cnn.bench.serve"]
    assert calls[0][calls[0].index("--requests") + 1] == "3"
    assert not row.text and row.figures["ratio"] == pytest.approx(0.7)


def test_peer_children_import_the_peers_module():
    assert peers.child_call("last_line", {"text": "first\nlast\n"}, preload=()) == "last"
    with pytest.raises(RuntimeError, match="exited with code 1: .*ImportError"):
        peers.child_call("no_such_function", {}, preload=())


def test_serve_counts_cores_with_the_package_rule():
    """One CPU-quota rule: serve's core count is cnn._threads.available_cores."""
    assert serve.available_cores is cnn._threads.available_cores
    args = argparse.Namespace(batches=[64], formats=["png"], concurrency=[1])
    assert serve.summary([], {}, args, 2, 1)["cores"] == cnn._threads.available_cores()


def test_serve_default_model_is_the_working_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "convnet.npz").write_bytes(b"")
    path, origin = serve.find_or_train_model(None, tmp_path)
    assert path == tmp_path / "models" / "convnet.npz" and origin == "models/convnet.npz"
    with pytest.raises(SystemExit, match="--model 'missing.npz': no such file"):
        serve.find_or_train_model("missing.npz", tmp_path)


def test_gunicorn_env_and_command_use_the_packaged_settings(monkeypatch):
    monkeypatch.setenv("CNN_API_TOKEN", "secret")
    monkeypatch.setenv("CNN_BATCHING", "0")
    env = server.gunicorn_env(8123, "/models", 2, drop=("CNN_API_TOKEN",),
                              CNN_RELOAD_INTERVAL=0.5)
    assert env["CNN_BIND"] == "127.0.0.1:8123" and env["CNN_MODEL_DIR"] == "/models"
    assert (env["CNN_WORKERS"], env["CNN_RELOAD_INTERVAL"]) == ("2", "0.5")
    assert "CNN_API_TOKEN" not in env and env["CNN_BATCHING"] == "0"
    # the workers import the service package this process finds, first
    root = env["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(root) / "service" / "gunicorn.conf.py").samefile(settings_path())
    command = server.gunicorn_command("--workers", "1")
    assert command[command.index("-c") + 1] == settings_path()
    assert command[-3:] == ["--workers", "1", "service:create_app()"]


def test_wait_ready_fails_fast_when_gunicorn_exits():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(timeout=30)
    with pytest.raises(RuntimeError, match="exited with 3"):
        server.wait_ready(server.free_port(), proc, timeout=30)
    assert server.stop(proc) == 3


def test_stop_kills_what_ignores_sigterm():
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert server.stop(proc, timeout=0.5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
