"""service.body in-process (the Flask test client): the per-worker body budget,
bodies of unroutable requests left unread, Content-Length checks. The framing
and timeout cases need a real server: tests/service/test_slow_clients.py."""
import gzip
import io
import zlib

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


# --------------------------------------------------------------------------
# Content-Encoding: gzip / deflate bodies, decompressed within the limit.

def compressed(data, coding):
    if coding in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)         # raw deflate, no zlib header
    return raw.compress(data) + raw.flush()


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "raw deflate"])
def test_compressed_bodies_are_decompressed(client, app, coding):
    body = npy_batch(3, fill=200)
    plain = client.post("/predict", data=body, content_type=NPY).get_json()
    header = "deflate" if coding == "raw deflate" else coding
    r, _ = post(client, "/predict", compressed(body, coding), **{"Content-Encoding": header})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == plain
    assert app.extensions["cnn"].body_budget.held == 0


class InflateSpy:
    """zlib.decompressobj, recording how many bytes it inflated."""

    produced = 0
    real = zlib.decompressobj

    def __init__(self, *args):
        self.inner = InflateSpy.real(*args)

    def decompress(self, data, max_length=0):
        out = self.inner.decompress(data, max_length)
        InflateSpy.produced += len(out)
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_gzip_bomb_is_refused_after_inflating_at_most_the_limit(make_app, models_dir,
                                                                  monkeypatch):
    import service.body
    monkeypatch.setattr(service.body.zlib, "decompressobj", InflateSpy)
    app = make_app(models_dir, CNN_MAX_CONTENT_LENGTH=MiB, CNN_WORKER_BODY_BYTES=2 * MiB)
    bomb = gzip.compress(bytes(256 * MiB), compresslevel=9)     # 250 KB
    assert len(bomb) < MiB
    r, _ = post(app.test_client(), "/predict", bomb, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert "once decompressed" in r.get_json()["error"]
    assert "CNN_MAX_CONTENT_LENGTH" in r.get_json()["error"]
    assert InflateSpy.produced <= MiB + 1
    assert app.extensions["cnn"].body_budget.held == 0


def test_inflate_stops_at_the_limit_exactly():
    from service.body import _inflate
    gz = 16 + zlib.MAX_WBITS
    data = bytes(range(256)) * 40
    assert _inflate(gzip.compress(data), gz, len(data)) == data
    assert _inflate(gzip.compress(data), gz, len(data) - 1) is None
    # concatenated gzip members (gzip.decompress reads them all) count together
    two = gzip.compress(data) + gzip.compress(data)
    assert _inflate(two, gz, 2 * len(data)) == data + data
    assert _inflate(two, gz, 2 * len(data) - 1) is None


@pytest.mark.parametrize("body, coding, needle", [
    (b"\x1f\x8b\x08\x00garbage", "gzip", "not valid gzip data"),
    (gzip.compress(npy_batch(1))[:-20], "gzip", "ends before its end marker"),
    (gzip.compress(npy_batch(1)) + b"junk", "gzip", "other data after"),
    (zlib.compress(npy_batch(1)) + b"junk", "deflate", "other data after"),
    (b"not deflate at all", "deflate", "not valid deflate data"),
])
def test_bad_compressed_bodies_are_400(client, body, coding, needle):
    r, _ = post(client, "/predict", body, **{"Content-Encoding": coding})
    assert r.status_code == 400 and needle in r.get_json()["error"], r.get_json()


def test_other_content_codings_are_415_before_the_body_is_read(client):
    r, stream = post(client, "/predict", b"\0" * MiB, **{"Content-Encoding": "br"})
    assert r.status_code == 415 and "'br'" in r.get_json()["error"]
    assert stream.taken == 0
    r, _ = post(client, "/predict", npy_batch(1), **{"Content-Encoding": "identity"})
    assert r.status_code == 200
