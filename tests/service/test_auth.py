"""Optional bearer-token authentication (CNN_API_TOKEN, service.auth) and the
service's default bind address (gunicorn.conf.py)."""
import runpy

import pytest

from tests.service.helpers import npy_batch
from tests.service.servers import ROOT

TOKEN = "s3cret-token"
NPY = "application/x-npy"


@pytest.fixture
def secured(make_app, models_dir):
    return make_app(models_dir, CNN_API_TOKEN=TOKEN).test_client()


@pytest.mark.parametrize("method,path", [
    ("POST", "/predict"), ("GET", "/models"), ("GET", "/models/tiny"), ("GET", "/metrics"),
    ("GET", "/v2"), ("GET", "/v2/models/tiny"), ("POST", "/v2/models/tiny/infer"),
    ("GET", "/"),
])
def test_every_other_endpoint_needs_the_token(secured, method, path):
    r = secured.open(path, method=method)
    assert r.status_code == 401, r.get_data(as_text=True)
    assert r.is_json and "Authorization: Bearer" in r.get_json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer wrong", "Bearer " + TOKEN[:-1], "Basic " + TOKEN,
                                    TOKEN, "Bearer", "Bearer " + TOKEN + "x"])
def test_a_wrong_token_is_refused(secured, header):
    r = secured.post("/predict", data=npy_batch(), content_type=NPY,
                     headers={"Authorization": header})
    assert r.status_code == 401
    assert 'Bearer realm="cnn"' in r.headers["WWW-Authenticate"]


def test_the_right_token_is_served(secured):
    r = secured.post("/predict", data=npy_batch(), content_type=NPY,
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert len(r.get_json()["predictions"]) == 1
    r = secured.get("/models", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/v2/health/live", "/v2/health/ready"])
def test_health_checks_stay_open(secured, path):
    assert secured.get(path).status_code == 200


def test_an_anonymous_body_is_refused_before_it_is_read(secured):
    # over the size limit: 401 (not 413) shows the token is checked first
    r = secured.post("/predict", data=b"\0" * 32, content_type=NPY,
                     headers={"Content-Length": str(10 ** 9)})
    assert r.status_code == 401


def test_without_a_token_the_service_is_open(client):
    assert client.get("/models").status_code == 200


def test_gunicorn_binds_loopback_unless_told(monkeypatch):
    monkeypatch.delenv("CNN_BIND", raising=False)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["bind"].startswith("127.0.0.1:")
    monkeypatch.setenv("CNN_BIND", "0.0.0.0:9000")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == "0.0.0.0:9000"


def test_containers_bind_every_interface_explicitly():
    import yaml
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["api"]["environment"]["CNN_BIND"] == "0.0.0.0:8000"
    assert "CNN_BIND=0.0.0.0:8000" in (ROOT / "Dockerfile").read_text()
