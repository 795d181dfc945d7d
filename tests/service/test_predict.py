"""POST /predict: every input form, predictions equal to cnn's own, every error."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

import cnn.images.decode as decode_module
from cnn.images import MAX_TOTAL_PIXELS, decode_images, pixels_from_array
from service.config import load_config
from tests.service.helpers import bilevel_png, image_bytes, png_bytes, random_images


def files(*items):
    """multipart data: {"images": [(BytesIO, filename), ...]}."""
    return {"images": [(io.BytesIO(data), name) for data, name in items]}


def post_files(client, *items, query=""):
    return client.post("/predict" + query, data=files(*items),
                       content_type="multipart/form-data")


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    return body


def assert_matches(body, model, pixels, names=None, top_k=3):
    """``body`` holds the predictions of ``model`` on ``pixels``, in order."""
    proba = model.predict_proba(pixels)
    labels = model.predict(pixels)
    assert body["model"] == "tiny"
    assert isinstance(body["version"], str) and body["version"]
    preds = body["predictions"]
    assert [p["index"] for p in preds] == list(range(len(pixels)))
    for i, p in enumerate(preds):
        assert p["label"] == int(labels[i])
        assert p["class"] == model.class_names[labels[i]]
        assert p["probability"] == pytest.approx(float(proba[i, labels[i]]), rel=1e-5)
        assert len(p["top_k"]) == top_k
        assert p["top_k"][0] == {"label": p["label"], "class": p["class"],
                                 "probability": p["probability"]}
        probs = [t["probability"] for t in p["top_k"]]
        assert probs == sorted(probs, reverse=True)
        for t in p["top_k"]:
            assert t["class"] == model.class_names[t["label"]]
            assert t["probability"] == pytest.approx(float(proba[i, t["label"]]), rel=1e-5)
        if names is not None:
            assert p["name"] == names[i]


# --------------------------------------------------------------------------
# Input forms, checked against the model itself.

def test_multipart_png_batch_matches_model(client, tiny_model):
    images = random_images(5, seed=3)
    pngs = [png_bytes(a) for a in images]
    names = [f"img{i}.png" for i in range(5)]
    r = post_files(client, *zip(pngs, names))
    assert r.status_code == 200, r.get_json()
    expected_pixels = decode_images(pngs)           # decoded exactly as the service does
    assert_matches(r.get_json(), tiny_model, expected_pixels, names)


def test_dark_background_png_round_trips_exactly(client, tiny_model):
    """A 28x28 light-on-black PNG decodes to its own pixels: same answer as the array."""
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 8:20] = 200
    r = post_files(client, (png_bytes(a), "shirt.png"))
    assert r.status_code == 200
    assert_matches(r.get_json(), tiny_model, a[None], ["shirt.png"])


def test_multipart_any_field_names_keep_body_order(client, tiny_model):
    """Files under different field names (a, b, a) are classified in body order."""
    images = random_images(3, seed=4)
    parts = [("a", "first.png"), ("b", "second.png"), ("a", "third.png")]
    boundary = "XbOuNdArYx"
    body = b""
    for (field, name), img in zip(parts, images):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                 f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode()
        body += png_bytes(img) + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    r = client.post("/predict", data=body,
                    content_type=f"multipart/form-data; boundary={boundary}")
    assert r.status_code == 200, r.get_json()
    expected = decode_images([png_bytes(img) for img in images])
    assert_matches(r.get_json(), tiny_model, expected, [n for _, n in parts])


def test_single_file_field(client, tiny_model):
    img = random_images(1, seed=5)[0]
    r = client.post("/predict", data={"file": (io.BytesIO(png_bytes(img)), "one.png")},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    assert_matches(r.get_json(), tiny_model, decode_images([png_bytes(img)]), ["one.png"])


def test_json_base64_and_data_urls(client, tiny_model):
    images = random_images(3, seed=6)
    pngs = [png_bytes(a) for a in images]
    payload = [base64.b64encode(pngs[0]).decode(),
               "data:image/png;base64," + base64.b64encode(pngs[1]).decode(),
               base64.urlsafe_b64encode(pngs[2]).decode().rstrip("=")]  # URL-safe, no padding
    r = client.post("/predict", json={"images": payload})
    assert r.status_code == 200, r.get_json()
    assert_matches(r.get_json(), tiny_model, decode_images(pngs), [None, None, None])


def test_jpeg_and_other_formats(client, tiny_model):
    img = random_images(1, seed=7, size=(40, 30))[0]
    items = [(image_bytes(img, fmt), f"x.{fmt.lower()}") for fmt in ("JPEG", "BMP", "GIF",
                                                                      "TIFF", "WEBP")]
    r = post_files(client, *items)
    assert r.status_code == 200, r.get_json()
    expected = decode_images([data for data, _ in items])
    assert_matches(r.get_json(), tiny_model, expected, [n for _, n in items])


@pytest.mark.parametrize("scale", ["uint8", "unit"])
def test_json_pixels_batch(client, tiny_model, scale):
    images = random_images(4, seed=8)
    pixels = images.tolist() if scale == "uint8" else (images / 255.0).tolist()
    r = client.post("/predict", json={"pixels": pixels})
    assert r.status_code == 200, r.get_json()
    assert_matches(r.get_json(), tiny_model, images)


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (1, 1, 28, 28), (2, 1, 28, 28)])
def test_json_pixels_shapes(client, tiny_model, shape):
    values = np.random.default_rng(9).integers(0, 256, size=shape)
    r = client.post("/predict", json={"pixels": values.tolist()})
    assert r.status_code == 200, r.get_json()
    expected = pixels_from_array(values.tolist())
    assert_matches(r.get_json(), tiny_model, expected)


def test_raw_image_body(client, tiny_model):
    img = random_images(1, seed=10)[0]
    data = png_bytes(img)
    r = client.post("/predict", data=data, content_type="image/png")
    assert r.status_code == 200
    assert_matches(r.get_json(), tiny_model, decode_images([data]))


def test_top_k_and_explicit_model(client, tiny_model):
    img = random_images(1, seed=11)
    r = client.post("/predict?model=tiny&top_k=10", json={"pixels": img.tolist()})
    assert r.status_code == 200
    assert_matches(r.get_json(), tiny_model, img, top_k=10)
    r = client.post("/predict?top_k=1", json={"pixels": img.tolist()})
    assert_matches(r.get_json(), tiny_model, img, top_k=1)


def test_invert_option(client, tiny_model):
    a = np.full((28, 28), 255, np.uint8)
    a[5:20, 5:20] = 30  # dark object on white: auto inverts
    data = png_bytes(a)
    auto = client.post("/predict", data=data, content_type="image/png").get_json()
    assert_matches(auto, tiny_model, (255 - a)[None])
    never = client.post("/predict?invert=false", data=data,
                        content_type="image/png").get_json()
    assert_matches(never, tiny_model, a[None])
    assert_error(client.post("/predict?invert=maybe", data=data, content_type="image/png"),
                 400)


def test_two_models_are_served_separately(make_app, models_dir, other_weights, tiny_model):
    import shutil

    from cnn.io import load_model
    shutil.copy(other_weights, models_dir / "other.npz")
    client = make_app(models_dir).test_client()
    img = random_images(2, seed=12)
    other = load_model(other_weights, threads=1)
    body = client.post("/predict?model=other", json={"pixels": img.tolist()}).get_json()
    assert body["model"] == "other"
    assert [p["label"] for p in body["predictions"]] == other.predict(img).tolist()
    body = client.post("/predict", json={"pixels": img.tolist()}).get_json()
    assert body["model"] == "other"  # alphabetically first is the default
    body = client.post("/predict?model=tiny", json={"pixels": img.tolist()}).get_json()
    assert_matches(body, tiny_model, img)


# --------------------------------------------------------------------------
# Per-image errors: every bad image is named, nothing is classified.

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_images_are_all_listed(client):
    good = png_bytes(random_images(1, seed=13)[0])
    noisy = png_bytes(random_images(1, seed=14, size=(64, 64))[0])
    truncated = noisy[: len(noisy) // 2]
    text = b"this is a text file, not an image\n"
    huge = bilevel_png(10_000, 10_000)
    assert len(huge) < 100_000
    r = post_files(client, (good, "good.png"), (truncated, "truncated.png"),
                   (text, "notes.txt"), (good, "good2.png"), (huge, "huge.png"),
                   (b"", "empty.png"))
    body = assert_error(r, 400)
    errors = body["errors"]
    assert [(e["index"], e["name"]) for e in errors] == [
        (1, "truncated.png"), (2, "notes.txt"), (4, "huge.png"), (5, "empty.png")]
    assert "truncated" in errors[0]["error"]
    assert "not a recognised image" in errors[1]["error"]
    assert "10000x10000" in errors[2]["error"] and "limit" in errors[2]["error"]
    assert "empty" in errors[3]["error"]
    assert "4 of 6 images" in body["error"]
    assert "predictions" not in body


def test_pillow_decompression_bomb_limit(client):
    """Over Pillow's own hard limit (2 x MAX_IMAGE_PIXELS) is refused too."""
    r = post_files(client, (bilevel_png(20_000, 10_000), "bomb.png"))
    body = assert_error(r, 400)
    assert body["errors"][0]["name"] == "bomb.png"
    assert "pixels" in body["errors"][0]["error"]


def test_max_pixels_setting(make_app, models_dir):
    client = make_app(models_dir, CNN_MAX_PIXELS=100).test_client()
    r = post_files(client, (png_bytes(np.zeros((11, 10), np.uint8)), "big.png"),
                   (png_bytes(np.zeros((10, 10), np.uint8)), "ok.png"))
    body = assert_error(r, 400)
    assert [e["index"] for e in body["errors"]] == [0]
    assert "over the limit of 100 pixels" in body["errors"][0]["error"]


def sixteen_bit_png(width, height):
    """A uniform 16-bit grey PNG (1024x768: ~3 KB, 1.5 MB of pixels)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 30000, np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def test_request_pixel_budget_is_413_before_decoding(make_app, models_dir, monkeypatch):
    client = make_app(models_dir, CNN_MAX_REQUEST_PIXELS=1_000).test_client()
    img = png_bytes(np.zeros((20, 20), np.uint8))  # 400 pixels
    assert post_files(client, (img, "a.png"), (img, "b.png")).status_code == 200
    monkeypatch.setattr(decode_module, "_load", no_decode)
    body = assert_error(post_files(client, (img, "a.png"), (img, "b.png"), (img, "c.png")), 413)
    assert body["error"] == ("the 3 images of this request have 1,200 pixels in all (width x "
                             "height), over the limit of 1,000 (CNN_MAX_REQUEST_PIXELS): send "
                             "fewer or smaller images per request")
    # base64 JSON, one image/* body and multipart with a .npy part: the same answer
    b64 = base64.b64encode(img).decode()
    r = client.post("/predict", json={"images": [b64, b64, b64]})
    assert "1,200 pixels" in assert_error(r, 413)["error"]
    client = make_app(models_dir, CNN_MAX_REQUEST_PIXELS=399).test_client()
    r = client.post("/predict", data=img, content_type="image/png")
    assert "CNN_MAX_REQUEST_PIXELS" in assert_error(r, 413)["error"]
    npy = io.BytesIO()
    np.save(npy, np.zeros((2, 28, 28), np.uint8))
    r = post_files(client, (npy.getvalue(), "batch.npy"), (img, "a.png"))
    assert "the 1 images of this request have 400 pixels" in assert_error(r, 413)["error"]


def test_default_limits_refuse_issue_9_uploads_without_decoding(client, monkeypatch):
    """256 small 16-bit files of 1024x768 (200 M pixels in all, ~0.8 MB) are
    refused from their headers; so is one 6000x6000 file."""
    monkeypatch.setattr(decode_module, "_load", no_decode)
    data = sixteen_bit_png(1024, 768)
    r = post_files(client, *[(data, f"{i}.png") for i in range(256)])
    assert "201,326,592 pixels" in assert_error(r, 413)["error"]
    body = assert_error(post_files(client, (bilevel_png(6000, 6000), "huge.png")), 400)
    assert "over the limit of 12,582,912 pixels" in body["errors"][0]["error"]


def test_request_pixel_budget_setting_is_checked():
    config, _ = load_config(environ={"CNN_MAX_REQUEST_PIXELS": "2_000_000"})
    assert config["CNN_MAX_REQUEST_PIXELS"] == 2_000_000
    assert load_config(environ={})[0]["CNN_MAX_REQUEST_PIXELS"] == MAX_TOTAL_PIXELS
    with pytest.raises(ValueError, match="CNN_MAX_REQUEST_PIXELS"):
        load_config(environ={"CNN_MAX_REQUEST_PIXELS": "lots"})


def no_decode(*args, **kwargs):
    raise AssertionError("an image was decoded")


def test_format_not_allowed(client):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="ICO")
    body = assert_error(post_files(client, (buf.getvalue(), "icon.ico")), 400)
    assert "not an allowed image format" in body["errors"][0]["error"]


def test_bad_base64_items_are_listed(client):
    good = base64.b64encode(png_bytes(random_images(1)[0])).decode()
    body = assert_error(client.post("/predict", json={"images": [
        good, "not base64 at all!!", 42, "data:image/png,abc", "",
        base64.b64encode(b"plain text").decode()]}), 400)
    assert [e["index"] for e in body["errors"]] == [1, 2, 3, 4, 5]
    messages = [e["error"] for e in body["errors"]]
    assert "base64" in messages[0]
    assert "expected a base64 string, got a number" in messages[1]
    assert "not base64-encoded" in messages[2]
    assert "empty" in messages[3]
    assert "not a recognised image" in messages[4]
    assert all(e["name"] is None for e in body["errors"])


# --------------------------------------------------------------------------
# Request-level errors.

def test_empty_batches(client):
    assert "empty batch" in assert_error(client.post("/predict", json={"images": []}),
                                         400)["error"]
    assert_error(client.post("/predict", json={"pixels": []}), 400)
    assert_error(client.post("/predict", data={}, content_type="multipart/form-data"), 400)
    # a form's file input left empty: no file at all
    r = client.post("/predict", data={"images": (io.BytesIO(b""), "")},
                    content_type="multipart/form-data")
    assert "empty batch" in assert_error(r, 400)["error"]


def test_too_many_images(make_app, models_dir):
    client = make_app(models_dir, CNN_MAX_IMAGES=3).test_client()
    png = png_bytes(random_images(1)[0])
    body = assert_error(post_files(client, *[(png, f"{i}.png") for i in range(4)]), 413)
    assert "CNN_MAX_IMAGES" in body["error"]
    assert_error(client.post("/predict", json={
        "images": [base64.b64encode(png).decode()] * 4}), 413)
    assert_error(client.post("/predict", json={"pixels": random_images(4).tolist()}), 413)
    assert client.post("/predict", json={"pixels": random_images(3).tolist()}).status_code \
        == 200


def test_body_too_large(make_app, models_dir):
    client = make_app(models_dir, CNN_MAX_CONTENT_LENGTH=2000).test_client()
    big = png_bytes(random_images(1, size=(64, 64))[0])
    assert len(big) > 2000
    body = assert_error(post_files(client, (big, "big.png")), 413)
    assert "2,000 bytes" in body["error"]
    assert_error(client.post("/predict", json={"images": [base64.b64encode(big).decode()]}),
                 413)
    assert_error(client.post("/predict", data=big, content_type="image/png"), 413)


@pytest.mark.parametrize("pixels, needle", [
    (np.zeros((27, 28)).tolist(), "shape"),
    (np.zeros((2, 3, 28, 28)).tolist(), "shape"),
    (np.zeros(784).tolist(), "shape"),
    ([[0] * 28] * 27 + [[0] * 27], "ragged"),
    ([[float("nan")] + [0] * 27] + [[0] * 28] * 27, "finite"),
    ([[float("inf")] + [0] * 27] + [[0] * 28] * 27, "finite"),
    ([[300] + [0] * 27] + [[0] * 28] * 27, "[0, 255]"),
    ([[-1] + [0] * 27] + [[0] * 28] * 27, "[0, 255]"),
    ([["1"] + [0] * 27] + [[0] * 28] * 27, "numbers"),
    ([[True] + [0] * 27] + [[0] * 28] * 27, "boolean"),
    ([[None] + [0] * 27] + [[0] * 28] * 27, "null"),
    (5, "nested list"),
    ("abc", "nested list"),
])
def test_bad_pixel_arrays(client, pixels, needle):
    assert needle in assert_error(client.post("/predict", json={"pixels": pixels}),
                                  400)["error"]


def test_nan_literal_in_json_body(client):
    row = "[" + ",".join(["NaN"] + ["0"] * 27) + "]"
    body = '{"pixels": [' + ",".join([row] * 28) + "]}"
    r = client.post("/predict", data=body, content_type="application/json")
    assert "finite" in assert_error(r, 400)["error"]


@pytest.mark.parametrize("body", [
    b"", b"{", b"[1, 2]", b"null", b'"images"', b"\xff\xfe\x00garbage", b"[" * 100_000,
    b'{"image": []}', b'{"images": [], "pixels": []}', b'{"pixels": [], "top_k": 3}',
    b'{"images": {"a": 1}}', b'{"images": null}',
])
def test_bad_json_bodies(client, body):
    assert_error(client.post("/predict", data=body, content_type="application/json"), 400)


@pytest.mark.parametrize("top_k", ["0", "11", "-1", "abc", "2.5", "", "1e1"])
def test_bad_top_k(client, top_k):
    r = client.post(f"/predict?top_k={top_k}", json={"pixels": random_images(1).tolist()})
    assert "top_k" in assert_error(r, 400)["error"]


def test_unknown_query_parameter(client):
    r = client.post("/predict?topk=3", json={"pixels": random_images(1).tolist()})
    assert "topk" in assert_error(r, 400)["error"]


def test_unknown_and_empty_model(client):
    body = assert_error(client.post("/predict?model=nope",
                                    json={"pixels": random_images(1).tolist()}), 404)
    assert body["available"] == ["tiny"]
    assert_error(client.post("/predict?model=", json={"pixels": random_images(1).tolist()}),
                 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/octet-stream", None])
def test_wrong_content_type(client, content_type):
    kwargs = {"data": b"hello"}
    if content_type:
        kwargs["content_type"] = content_type
    assert_error(client.post("/predict", **kwargs), 415)


def test_multipart_text_field_is_refused(client):
    r = client.post("/predict", data={"file": "not a file"},
                    content_type="multipart/form-data")
    assert "not a file" in assert_error(r, 400)["error"]


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_wrong_method(client, method):
    r = getattr(client, method)("/predict")
    assert_error(r, 405)
    assert "POST" in r.headers["Allow"]


def test_no_model_loaded(make_app, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    client = make_app(empty).test_client()
    body = assert_error(client.post("/predict", json={"pixels": random_images(1).tolist()}),
                        503)
    assert "no model is loaded" in body["error"]


def test_response_is_plain_json(client):
    r = client.post("/predict", json={"pixels": random_images(2).tolist()})
    assert r.mimetype == "application/json"
    json.loads(r.get_data())  # strict JSON (no NaN)


def test_canvas_drawing(client, tiny_model):
    """What the index page sends: a 280x280 RGBA PNG, white strokes on black."""
    from PIL import Image, ImageDraw
    im = Image.new("RGBA", (280, 280), (0, 0, 0, 255))
    ImageDraw.Draw(im).line([(60, 40), (140, 240), (220, 40)], fill=(255, 255, 255, 255),
                            width=22)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    r = client.post("/predict?top_k=5", data={"images": [(io.BytesIO(buf.getvalue()),
                                                          "drawing.png")]},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    pixels = decode_images([buf.getvalue()])
    assert pixels[0].max() > 200 and pixels[0][0].max() == 0  # not inverted, downscaled
    assert_matches(r.get_json(), tiny_model, pixels, ["drawing.png"], top_k=5)


# --------------------------------------------------------------------------
# ?partial=true: the readable images are classified, the bad ones listed.
#
# Decided: with partial=true a batch with no readable image is still 400 (with
# the same errors list): a 200 with no predictions would be an answer to nothing.

def assert_partial(body, model, pixels, indexes, names=None, top_k=3):
    """``body`` classifies ``pixels`` as the request's images ``indexes`` (in order)."""
    assert body["partial"] is True
    assert [p["index"] for p in body["predictions"]] == indexes
    renumbered = dict(body, predictions=[dict(p, index=i)
                                         for i, p in enumerate(body["predictions"])])
    assert_matches(renumbered, model, pixels, names, top_k)


def test_partial_multipart_classifies_the_readable_images(client, tiny_model):
    pngs = [png_bytes(a) for a in random_images(3, seed=40)]
    r = post_files(client, (b"not an image", "notes.txt"), (pngs[0], "a.png"),
                   (pngs[1][:40], "cut.png"), (pngs[1], "b.png"), (pngs[2], "c.png"),
                   query="?partial=true")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert_partial(body, tiny_model, decode_images(pngs), [1, 3, 4],
                   ["a.png", "b.png", "c.png"])
    assert [(e["index"], e["name"]) for e in body["errors"]] == [(0, "notes.txt"),
                                                                 (2, "cut.png")]
    assert "not a recognised image" in body["errors"][0]["error"]
    assert "not a readable PNG" in body["errors"][1]["error"]


def test_partial_json_images_keep_request_indexes(client, tiny_model):
    pngs = [png_bytes(a) for a in random_images(2, seed=41)]
    payload = [42, base64.b64encode(pngs[0]).decode(), "not base64!!",
               base64.b64encode(pngs[1]).decode()]
    r = client.post("/predict?partial=TRUE&top_k=2", json={"images": payload})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert_partial(body, tiny_model, decode_images(pngs), [1, 3], [None, None], top_k=2)
    assert [e["index"] for e in body["errors"]] == [0, 2]


def test_partial_with_npy_parts_counts_their_images(client, tiny_model):
    """Positions count every image of a .npy part, before and after a bad file."""
    images = random_images(4, seed=42)
    buf = io.BytesIO()
    np.save(buf, images[:2])
    r = post_files(client, (buf.getvalue(), "two.npy"), (b"junk", "bad.png"),
                   (png_bytes(images[2]), "c.png"), query="?partial=1&invert=false")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert [(p["index"], p["name"]) for p in body["predictions"]] == [
        (0, "two.npy[0]"), (1, "two.npy[1]"), (3, "c.png")]
    assert [(e["index"], e["name"]) for e in body["errors"]] == [(2, "bad.png")]
    expected = tiny_model.predict(images[[0, 1, 2]])
    assert [p["label"] for p in body["predictions"]] == expected.tolist()


def test_partial_with_only_readable_images_says_complete(client, tiny_model):
    pngs = [png_bytes(a) for a in random_images(2, seed=43)]
    r = post_files(client, (pngs[0], "a.png"), (pngs[1], "b.png"), query="?partial=true")
    body = r.get_json()
    assert r.status_code == 200 and body["partial"] is False and body["errors"] == []
    assert_matches(body, tiny_model, decode_images(pngs), ["a.png", "b.png"])


@pytest.mark.parametrize("query", ["?partial=true", "?partial=false", ""])
def test_no_readable_image_is_400_partial_or_not(client, query):
    r = post_files(client, (b"junk", "a.png"), (b"", "b.png"), query=query)
    body = assert_error(r, 400)
    assert [(e["index"], e["name"]) for e in body["errors"]] == [(0, "a.png"), (1, "b.png")]
    assert "nothing was classified" in body["error"] and "predictions" not in body
    one = assert_error(client.post("/predict" + query, data=b"junk",
                                   content_type="image/png"), 400)
    assert one["error"] == "the image could not be read; nothing was classified"


def test_strict_default_refuses_a_mixed_batch(client):
    good = png_bytes(random_images(1, seed=44)[0])
    for query in ("", "?partial=no"):
        body = assert_error(post_files(client, (good, "a.png"), (b"junk", "b.png"),
                                       query=query), 400)
        assert body["error"] == "1 of 2 images could not be read; nothing was classified"
        assert set(body) == {"error", "errors"}   # no partial answer, no partial flag


@pytest.mark.parametrize("value", ["maybe", "", "2"])
def test_bad_partial_value(client, value):
    good = png_bytes(random_images(1, seed=45)[0])
    body = assert_error(post_files(client, (good, "a.png"), query=f"?partial={value}"), 400)
    assert body["error"] == f"partial must be true or false, got {value!r}"
