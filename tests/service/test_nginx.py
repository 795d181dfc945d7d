"""deploy/nginx.conf in front of a real gunicorn, as docker-compose.yml runs them.

The server block is used as written except for two lines: the upstream
(``api:8000`` -> gunicorn's 127.0.0.1 port) and the listen address (a free
127.0.0.1 port). Needs the nginx binary (.ci/run installs Debian's
nginx-light); loopback only, bounded in time.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.service.helpers import npy_batch
from tests.service.servers import ROOT, free_port, gunicorn, request

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                  else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed "
                                "(apt-get install nginx-light; .ci/run does)")


@pytest.fixture(scope="module")
def backend(tmp_path_factory, tiny_weights):
    models = tmp_path_factory.mktemp("nginx-models")
    (models / "tiny.npz").write_bytes(tiny_weights.read_bytes())
    with gunicorn(models, tmp_path_factory.mktemp("nginx-gunicorn-logs"),
                  CNN_WORKERS="2") as info:
        yield info


@pytest.fixture(scope="module")
def proxy(backend, tmp_path_factory):
    """nginx on 127.0.0.1:<port> in front of ``backend``; yields its port."""
    folder = tmp_path_factory.mktemp("nginx")
    port = free_port()
    server = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server api:8000 resolve;" in server and "listen 8000;" in server
    server = server.replace("server api:8000 resolve;", f"server 127.0.0.1:{backend['port']};")
    server = server.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    (folder / "server.conf").write_text(server)
    temp = {name: folder / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    (folder / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
          f"error_log {folder}/error.log warn;\nevents {{ worker_connections 512; }}\n"
          f"http {{\n  access_log {folder}/access.log;\n"
          + "".join(f"  {name}_temp_path {path};\n" if name != "body" else
                    f"  client_body_temp_path {path};\n" for name, path in temp.items())
          + f"  include {folder}/server.conf;\n}}\n")
    proc = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {proc.stderr.read().decode(errors='replace')}")
            try:
                if request(port, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "nginx did not answer within 10 s"
            time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def test_predictions_through_the_proxy_are_the_services(proxy, backend):
    body = npy_batch(4)
    via = request(proxy, "POST", "/predict", body, {"Content-Type": "application/x-npy"})
    direct = request(backend["port"], "POST", "/predict", body,
                     {"Content-Type": "application/x-npy"})
    assert via[0] == direct[0] == 200
    assert via[2]["predictions"] == direct[2]["predictions"]


def test_a_body_over_the_limit_is_a_json_413_from_the_proxy(proxy):
    status, headers, body = request(proxy, "POST", "/predict", b"\0" * (16 * 1024 * 1024 + 1),
                                    {"Content-Type": "application/x-npy"})
    assert status == 413
    assert headers["Content-Type"].startswith("application/json")
    assert "CNN_MAX_CONTENT_LENGTH" in body["error"]


def test_slow_clients_held_by_the_proxy_never_reach_a_worker(proxy, backend):
    spec = importlib.util.spec_from_file_location(
        "slow_clients", ROOT / "benchmarks" / "slow_clients.py")
    slow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(slow)
    before = backend["stdout"].read_text(errors="replace").count('"POST /predict')
    res = slow.run("127.0.0.1", proxy, slow=50, kind="mixed", duration=4.0, interval=0.2,
                   probe_timeout=1.0)
    for path, probes in res["probes"].items():
        assert len(probes) >= 5
        late = [round(t, 3) for ok, t in probes if not ok or t >= 1.0]
        assert not late, f"{path}: {len(late)} of {len(probes)} probes failed or took >= 1 s"
    time.sleep(0.5)   # the access log is written after each answer
    after = backend["stdout"].read_text(errors="replace").count('"POST /predict')
    # only the probes' own /predict requests reached gunicorn
    assert after - before == len(res["probes"]["/predict"])
