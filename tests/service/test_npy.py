"""POST /predict with NumPy .npy arrays: application/x-npy bodies and .npy
multipart parts give the predictions of the same pixels sent any other way, and
every bad array is a 4xx naming the problem."""
import io
import json
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.hostile import raw_npy_header
from tests.service.helpers import png_bytes, random_images

NPY = "application/x-npy"


def npy(array, **kw):
    buf = io.BytesIO()
    np.save(buf, array, **kw)
    return buf.getvalue()


def post_npy(client, data, query=""):
    return client.post("/predict" + query, data=data, content_type=NPY)


def post_files(client, *items, query=""):
    return client.post("/predict" + query,
                       data={"file": [(io.BytesIO(data), name) for data, name in items]},
                       content_type="multipart/form-data")


def assert_error(response, status, *needles):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    message = response.get_json()["error"]
    for needle in needles:
        assert needle in message, message
    return response.get_json()


def summary(body):
    return [(p["label"], p["top_k"]) for p in body["predictions"]]


@pytest.fixture
def images():
    return random_images(6, seed=11)


@pytest.fixture
def png_answer(client, images):
    """The answer for the same pixels as PNG files (not inverted: raw arrays never are)."""
    r = post_files(client, *[(png_bytes(a), f"{i}.png") for i, a in enumerate(images)],
                   query="?invert=false")
    assert r.status_code == 200
    return r.get_json()


def test_uint8_batch_matches_png_and_pixel_json(client, images, tiny_model, png_answer):
    r = post_npy(client, npy(images))
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["model"] == "tiny"
    assert [p["index"] for p in body["predictions"]] == list(range(len(images)))
    assert [p["name"] for p in body["predictions"]] == [None] * len(images)
    assert summary(body) == summary(png_answer)  # bit-identical probabilities
    pixels = client.post("/predict", json={"pixels": images.tolist()}).get_json()
    assert summary(body) == summary(pixels)
    assert [p["label"] for p in body["predictions"]] == tiny_model.predict(images).tolist()


@pytest.mark.parametrize("convert", [
    lambda a: a[:, None],                                        # (N, 1, 28, 28)
    lambda a: a.astype(np.float32) / 255,                        # float 0-1
    lambda a: (a.astype(np.float64) / 255)[:, None],
    lambda a: a.astype(np.float64),                              # float 0-255
    lambda a: a.astype(">f4"),                                   # big-endian
    lambda a: np.asfortranarray(a),                              # Fortran order
    lambda a: a.astype(np.float16),
], ids=["n1hw", "f32-01", "f64-01-n1hw", "f64-0255", "big-endian", "fortran", "f16"])
def test_other_dtypes_and_shapes(client, images, png_answer, convert):
    r = post_npy(client, npy(convert(images)))
    assert r.status_code == 200, r.get_json()
    got = r.get_json()
    assert [p["label"] for p in got["predictions"]] == \
        [p["label"] for p in png_answer["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                               [p["probability"] for p in png_answer["predictions"]],
                               rtol=1e-3)


def test_one_image_without_batch_axis(client, images, png_answer):
    r = post_npy(client, npy(images[0]), query="?top_k=5")
    assert r.status_code == 200
    (p,) = r.get_json()["predictions"]
    assert p["label"] == png_answer["predictions"][0]["label"] and len(p["top_k"]) == 5


def test_values_follow_the_pixel_json_rule(client):
    """As {"pixels": ...}: no value above 1 means the 0-1 scale, also for uint8."""
    binary = (random_images(3, seed=2) > 127).astype(np.uint8)
    r = post_npy(client, npy(binary)).get_json()
    as_json = client.post("/predict", json={"pixels": binary.tolist()}).get_json()
    assert summary(r) == summary(as_json)
    as_float = post_npy(client, npy(binary.astype(np.float32))).get_json()
    assert summary(r) == summary(as_float)


def test_npy_parts_in_multipart_mix_with_image_files(client, images, png_answer):
    r = post_files(client, (png_bytes(images[0]), "first.png"),
                   (npy(images[1:4]), "middle.npy"), (png_bytes(images[4]), "a.png"),
                   (npy(images[5:]), "LAST.NPY"), query="?invert=false")
    assert r.status_code == 200, r.get_json()
    preds = r.get_json()["predictions"]
    assert [p["name"] for p in preds] == ["first.png", "middle.npy[0]", "middle.npy[1]",
                                         "middle.npy[2]", "a.png", "LAST.NPY[0]"]
    assert [p["index"] for p in preds] == list(range(6))
    assert summary(r.get_json()) == summary(png_answer)


def test_npy_part_recognised_by_content_type(client, images, png_answer):
    data = {"file": [(io.BytesIO(npy(images)), "batch.bin", NPY)]}
    r = client.post("/predict", data=data, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert summary(r.get_json()) == summary(png_answer)


# --------------------------------------------------------------------------
# Bad arrays.

def header_only(shape, dtype="|u1"):
    """A .npy file with a hand-written header and no data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize("data, status, needles", [
    (npy(np.zeros((2, 28, 28), np.int64)), 400, ["dtype int64", "uint8"]),
    (npy(np.zeros((2, 28, 28), np.uint16)), 400, ["dtype uint16"]),
    (npy(np.zeros((2, 28, 28), bool)), 400, ["dtype bool"]),
    (npy(np.zeros((2, 28, 28), np.complex64)), 400, ["dtype complex64"]),
    (npy(np.zeros((2, 28, 28), "U1")), 400, ["dtype <U1"]),
    (npy(np.zeros(2, [("a", "u1"), ("b", "f4")])), 400, ["dtype"]),
    (npy(np.array([1, "x"], dtype=object), allow_pickle=True), 400,
     ["Python objects", "pickles are not accepted"]),
    (pickle.dumps(np.zeros((2, 28, 28), np.uint8)), 400, ["not a .npy file", "np.save"]),
    (b"PK\x03\x04" + bytes(100), 400, [".npz archive"]),
    (b"", 400, ["empty"]),
    (b"\x93NUMPY", 400, ["unreadable header"]),
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'}  \n", 400, ["unreadable header"]),
    (b"\x93NUMPY\x03\x00" + bytes(20), 400, ["unreadable header", "version 3.0"]),
    (b"\x93NUMPY\x01\x00\x46\x00" + b"{'descr': '|u1', 'fortran_order': False, "
     b"'shape': (1, 28, 28), 'x': __import__('os')}\n", 400, ["unreadable header"]),
    (npy(np.zeros((2, 28, 27), np.uint8)), 400, ["shape", "(2, 28, 27)", "(N, 28, 28)"]),
    (npy(np.zeros((2, 3, 28, 28), np.uint8)), 400, ["shape", "(2, 3, 28, 28)"]),
    (npy(np.zeros((1, 1, 1, 28, 28), np.uint8)), 400, ["shape"]),
    (npy(np.zeros(784, np.uint8)), 400, ["shape", "(784,)"]),
    (npy(np.zeros((0, 28, 28), np.uint8)), 400, ["empty batch"]),
    (npy(np.zeros((257, 28, 28), np.uint8)), 413, ["257", "CNN_MAX_IMAGES"]),
    (header_only((10 ** 12, 28, 28)), 413, ["too many images"]),
    (npy(np.zeros((2, 28, 28), np.uint8))[:-1], 400, ["truncated", "1,568 bytes", "1,567"]),
    (header_only((2, 28, 28)), 400, ["truncated"]),
    (npy(np.zeros((2, 28, 28), np.uint8)) + b"\x00", 400, ["extra bytes"]),
    (npy(np.full((2, 28, 28), np.nan, np.float32)), 400, ["finite", "nan", "(0, 0, 0)"]),
    (npy(np.full((1, 28, 28), -np.inf)), 400, ["finite", "-inf"]),
    (npy(np.full((1, 28, 28), -1.0)), 400, ["[0, 255]", "-1"]),
    (npy(np.full((1, 28, 28), 256.0, np.float32)), 400, ["[0, 255]", "256"]),
], ids=lambda v: None)
def test_bad_arrays_are_refused_with_the_reason(client, data, status, needles):
    assert_error(post_npy(client, data), status, *needles)


def test_bad_npy_part_names_the_file(client, images):
    r = post_files(client, (png_bytes(images[0]), "a.png"),
                   (npy(images.astype(np.int32)), "b.npy"))
    assert_error(r, 400, "file 1 ('b.npy')", "dtype int32")


def test_bad_images_next_to_npy_parts_are_listed_at_their_positions(client, images):
    r = post_files(client, (b"junk", "a.png"), (npy(images[:3]), "b.npy"),
                   (b"more junk", "c.png"))
    body = assert_error(r, 400, "2 of 5 images")
    assert [(e["index"], e["name"]) for e in body["errors"]] == [(0, "a.png"), (4, "c.png")]


def test_too_many_images_over_npy_parts(make_app, models_dir, images):
    client = make_app(models_dir, CNN_MAX_IMAGES=8).test_client()
    r = post_files(client, (npy(images), "a.npy"), (npy(images), "b.npy"))
    assert_error(r, 413, "12", "the limit is 8")


def test_body_over_the_size_limit(make_app, models_dir):
    client = make_app(models_dir, CNN_MAX_CONTENT_LENGTH=10_000).test_client()
    assert_error(post_npy(client, npy(np.zeros((20, 28, 28), np.uint8))), 413, "10,000 bytes")


def test_415_names_the_npy_content_type(client):
    assert_error(client.post("/predict", data=b"x", content_type="application/octet-stream"),
                 415, NPY)


def test_npy_never_unpickles(client, monkeypatch):
    """An object array is refused from its header: pickle is never called."""
    def boom(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    data = npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_error(post_npy(client, data), 400, "Python objects")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(header=st.dictionaries(st.sampled_from(["descr", "fortran_order", "shape", "x"]),
                              st.sampled_from(["|u1", "<f4", "|O", "<i8", True, False, 0,
                                               (), (1, 28, 28), (2, 28), (-1, 28, 28),
                                               (1, 28, 28, 1), "'; import os"]),
                              max_size=4),
       tail=st.binary(max_size=2000), version=st.sampled_from([b"\x01\x00", b"\x02\x00\x00",
                                                               b"\x09\x09"]))
def test_random_npy_headers_never_cause_a_500(client, header, tail, version):
    text = repr(header).encode() + b"\n"
    size = len(text).to_bytes(2 if version[0] == 1 else 4, "little")
    data = b"\x93NUMPY" + version[:2] + size + text + tail
    r = post_npy(client, data)
    assert r.status_code in (200, 400, 413), (r.status_code, r.get_data())
    assert isinstance(r.get_json(), dict)
    if r.status_code != 200:
        assert isinstance(r.get_json()["error"], str)


def test_npy_answer_is_plain_json(client, images):
    r = post_npy(client, npy(images[:2]))
    assert r.mimetype == "application/json"
    assert json.loads(r.get_data())["predictions"][1]["index"] == 1


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 28, 28), 'x': object()}",
    "{'descr': np.float32, 'fortran_order': False, 'shape': (1, 28, 28)}",
    "{'descr': f, 'fortran_order': False, 'shape': (1, 28, 28)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': [x for x in ()]}",
])
def test_header_errors_name_the_problem_without_python_internals(client, header):
    body = assert_error(post_npy(client, raw_npy_header(header) + bytes(784 * 4)), 400,
                        "unreadable header")
    message = body["error"]
    assert "0x" not in message and "<ast" not in message and "object at" not in message, message
    assert "np.save" in message
