"""service.body in-process (the Flask test client): the per-worker body budget,
bodies of unroutable requests left unread, Content-Length checks. The framing
and timeout cases need a real server: tests/service/test_slow_clients.py."""
import io

import pytest

from tests.service.helpers import npy_batch

NPY = "application/x-npy"
MiB = 1024 * 1024


class CountingStream(io.BytesIO):
    """A wsgi.input that records how many bytes were read from it."""

    def __init__(self, data):
        super().__init__(data)
        self.taken = 0

    def read(self, size=-1):
        block = super().read(size)
        self.taken += len(block)
        return block


def post(client, path, data, **headers):
    stream = CountingStream(data)
    r = client.open(path, method="POST", input_stream=stream, content_type=NPY,
                    headers={"Content-Length": str(len(data)), **headers})
    return r, stream


def test_bodies_beyond_the_workers_budget_are_503_and_given_back(make_app, models_dir):
    app = make_app(models_dir, CNN_MAX_CONTENT_LENGTH=MiB, CNN_WORKER_BODY_BYTES=2 * MiB)
    client, budget = app.test_client(), app.extensions["cnn"].body_budget
    body = npy_batch(4)
    r, _ = post(client, "/predict", body)
    assert r.status_code == 200 and budget.held == 0      # given back after the answer
    assert budget.take(2 * MiB - len(body) // 2)          # other requests hold most of it
    r, _ = post(client, "/predict", body)
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.headers["Retry-After"] == "1" and "CNN_WORKER_BODY_BYTES" in r.get_json()["error"]
    assert budget.held == 2 * MiB - len(body) // 2        # the refused request's bytes came back
    budget.give(2 * MiB - len(body) // 2)
    assert post(client, "/predict", body)[0].status_code == 200 and budget.held == 0


def test_the_budget_must_hold_one_full_body(make_app, models_dir):
    with pytest.raises(ValueError, match="CNN_WORKER_BODY_BYTES"):
        make_app(models_dir, CNN_MAX_CONTENT_LENGTH=2 * MiB, CNN_WORKER_BODY_BYTES=MiB)


@pytest.mark.parametrize("path", ["/health", "/nowhere", "/v2/health/live", "/openapi.json"])
def test_bodies_of_unroutable_requests_are_never_read(client, path):
    r, stream = post(client, path, b"\0" * (4 * MiB))
    assert r.status_code in (404, 405)
    assert stream.taken == 0


def test_with_a_token_open_paths_take_no_anonymous_bodies(make_app, models_dir):
    client = make_app(models_dir, CNN_API_TOKEN="t0ken").test_client()
    r, stream = post(client, "/health", b"\0" * MiB)
    assert r.status_code == 401 and stream.taken == 0
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("value", ["12x", "-1", "\u00b2", "1e3"])
def test_a_bad_content_length_is_400(client, value):
    r = client.post("/predict", data=npy_batch(), content_type=NPY,
                    environ_overrides={"CONTENT_LENGTH": value})
    assert r.status_code == 400 and "Content-Length" in r.get_json()["error"]


@pytest.mark.parametrize("token", ["caf\u00e9", " padded", "tab\there"])
def test_tokens_headers_cannot_carry_are_refused_at_start(make_app, models_dir, token):
    with pytest.raises(ValueError, match="CNN_API_TOKEN"):
        make_app(models_dir, CNN_API_TOKEN=token)
