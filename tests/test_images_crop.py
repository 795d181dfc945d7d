"""cnn.images.crop and cnn.images.policy: uploads decoded exactly as folder training
decoded its images, and which pipeline (pad/crop, invert) a weights file asks for."""
import io
import types

import numpy as np
import pytest
from PIL import Image

from cnn.datasets import folder as folder_mod, load_data
from cnn.images import ImageError, UploadPolicy, decode_image, decode_images, upload_policy
from cnn.images.pixels import pixels_from_array
from cnn.images.policy import light_on_black


def encode(array_or_image, fmt, **kwargs):
    im = array_or_image if isinstance(array_or_image, Image.Image) else \
        Image.fromarray(array_or_image)
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def varied_files(rng):
    """{name: bytes}: every mode and format the decoder treats differently."""
    def rgb(h, w):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    def gray(h, w):
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    rotated = Image.fromarray(rgb(30, 40))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rgba = np.dstack([rgb(24, 24), gray(24, 24)])
    palette = Image.fromarray(rgb(20, 20)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    wide = Image.fromarray(gray(18, 26).astype(np.uint16) * 257)   # 16-bit grey
    return {
        "photo.jpg": encode(rgb(48, 64), "JPEG", quality=90),
        "rotated.jpg": encode(rotated, "JPEG", exif=exif.tobytes()),
        "alpha.png": encode(rgba, "PNG"),
        "palette.gif": encode(palette, "GIF", transparency=0),
        "wide.png": encode(wide, "PNG"),
        "exact.png": encode(gray(16, 16), "PNG"),          # the plain-PNG fast path
        "small.bmp": encode(rgb(9, 7), "BMP"),
        "tall.webp": encode(rgb(50, 20), "WEBP", lossless=True),
    }


@pytest.fixture(scope="module")
def files():
    return varied_files(np.random.default_rng(0))


@pytest.fixture(scope="module")
def tree(tmp_path_factory, files):
    """DIR/train/<a|b>/ and DIR/test/<a|b>/ holding every varied file."""
    root = tmp_path_factory.mktemp("tree")
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for name, data in files.items():
                (root / split / c / name).write_bytes(data)
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_uploads_decode_exactly_as_training_decoded(tree, files, tmp_path, channels):
    ds = load_data(tree, image_size=(16, 16), channels=channels, cache_dir=tmp_path)
    assert ds.meta["skipped"] == 0 and len(ds.test_images) == 2 * len(files)
    model = types.SimpleNamespace(input_shape=ds.input_shape, summary_info={"data": ds.meta})
    policy = upload_policy(model)
    assert policy == UploadPolicy((16, 16), channels, "crop", False)
    # test images are cached in class order, then file name order
    names = sorted(files)
    uploaded = decode_images([files[n] for n in names] * 2, **policy.decode_options())
    cached = ds.test_images if channels == 1 else ds.test_images.transpose(0, 2, 3, 1)
    for i, name in enumerate(names * 2):
        np.testing.assert_array_equal(uploaded[i], cached[i], err_msg=name)
        one = decode_image(files[name], **policy.decode_options())
        np.testing.assert_array_equal(one, cached[i], err_msg=name)
        assert one.shape == ((16, 16) if channels == 1 else (16, 16, 3))
        # training's own entry point is the same function, with its own pixel limit
        path = tree / "test" / ("a" if i < len(names) else "b") / name
        np.testing.assert_array_equal(folder_mod.decode_image(path, (16, 16), channels), one)


def test_crop_keeps_the_aspect_ratio_centre_crops_and_applies_exif(tmp_path):
    # 40 wide x 20 high: left and right quarters are cropped away
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = (255, 0, 0)
    a[:, 10:30] = (0, 255, 0)
    a[:, 30:] = (0, 0, 255)
    out = decode_image(encode(a, "PNG"), size=(10, 10), channels=3, fit="crop", invert=False)
    assert out.shape == (10, 10, 3) and (out[:, 2:-2] == (0, 255, 0)).all()
    assert (out[:, 0, 1] > 128).all() and (out[:, -1, 1] > 128).all()   # (edges blend)
    # EXIF orientation 6 (rotate 90 clockwise to view): the stored 20x40 becomes 40x20
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    out = decode_image(encode(im, "PNG", exif=exif.tobytes()), size=(40, 20), channels=3,
                       fit="crop", invert=False)
    assert out.shape == (40, 20, 3)
    assert (out[:8] == (255, 0, 0)).all() and (out[-8:] == (0, 0, 255)).all()


def test_crop_inverts_only_when_asked_or_auto_on_a_light_border():
    light = np.full((12, 12), 230, np.uint8)
    light[4:8, 4:8] = 10
    data = encode(light, "PNG")
    kw = dict(size=(12, 12), fit="crop")
    np.testing.assert_array_equal(decode_image(data, invert=False, **kw), light)
    np.testing.assert_array_equal(decode_image(data, invert=True, **kw), 255 - light)
    np.testing.assert_array_equal(decode_image(data, invert="auto", **kw), 255 - light)
    np.testing.assert_array_equal(decode_image(encode(255 - light, "PNG"), invert="auto", **kw),
                                  255 - light)


def test_crop_keeps_the_service_limits_and_errors():
    big = encode(np.zeros((64, 64, 3), np.uint8), "PNG")
    with pytest.raises(ImageError, match="over the limit of 1,000 pixels"):
        decode_image(big, size=(8, 8), channels=3, fit="crop", max_pixels=1000)
    with pytest.raises(ImageError, match="not a recognised image"):
        decode_image(b"hello world, not an image", size=(8, 8), channels=3, fit="crop")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(big[:len(big) // 2], size=(8, 8), channels=3, fit="crop")
    out = np.full((2, 8, 8, 3), 7, np.uint8)
    errors = []
    out = decode_images([big, b"junk"], size=(8, 8), channels=3, fit="crop",
                        on_error=lambda i, e: errors.append(i))
    assert errors == [1] and out.shape == (2, 8, 8, 3) and (out[1] == 0).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=2), "channels must be 1 (grayscale) or 3 (RGB), got 2"),
    (dict(channels=3), "colour (channels=3) images use fit='crop'"),
    (dict(fit="stretch"), "fit must be 'pad' (fit inside, pad) or 'crop'"),
])
def test_bad_options_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_image(encode(np.zeros((4, 4), np.uint8), "PNG"), **kwargs)


def fake(shape, data=None):
    return types.SimpleNamespace(input_shape=shape,
                                 summary_info={} if data is None else {"data": data})


def test_policy_from_the_weights_file_record():
    # IDX-trained and older files: Fashion-MNIST style
    assert upload_policy(fake((1, 28, 28))) == UploadPolicy((28, 28), 1, "pad", "auto")
    assert upload_policy(fake((3, 32, 32), {"source_kind": "npz"})) == \
        UploadPolicy((32, 32), 3, "crop", False)
    assert upload_policy(fake((1, 20, 24), {"source_kind": "folder"})) == \
        UploadPolicy((20, 24), 1, "crop", False)
    assert upload_policy(fake((1, 28, 28), {"fit": "crop", "invert": "auto"})) == \
        UploadPolicy((28, 28), 1, "crop", "auto")
    assert upload_policy(fake((1, 28, 28), {"fit": "pad", "invert": "never"})) \
        .decode_options(True)["invert"] is True


def test_light_on_black_is_read_from_the_training_images():
    rng = np.random.default_rng(1)
    dark = np.zeros((50, 28, 28), np.uint8)
    dark[:, 6:22, 6:22] = rng.integers(100, 256, (50, 16, 16))
    assert light_on_black(dark)
    assert not light_on_black(255 - dark)                              # objects on white
    assert not light_on_black(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))  # photos
    assert not light_on_black(np.zeros((5, 3, 8, 8), np.uint8))        # colour: never


def test_colour_pixels_in_either_layout_are_the_same_input():
    rng = np.random.default_rng(2)
    first = rng.integers(0, 256, (2, 3, 5, 6), dtype=np.uint8)
    last = first.transpose(0, 2, 3, 1).copy()
    want = first.astype(np.float32) / 255
    for a in (first, last, first.tolist(), last.tolist()):
        np.testing.assert_array_equal(pixels_from_array(a, size=(5, 6), channels=3), want)
    np.testing.assert_array_equal(pixels_from_array(last[0], size=(5, 6), channels=3), want[:1])
    with pytest.raises(ValueError, match=r"\(N, 3, 5, 6\) or \(N, 5, 6, 3\)"):
        pixels_from_array(first[:, :2], size=(5, 6), channels=3)
    bad = last.astype(np.float64)
    bad[1, 4, 5, 2] = 300
    with pytest.raises(ValueError, match=r"found 300 at index \(1, 4, 5, 2\)"):
        pixels_from_array(bad, size=(5, 6), channels=3)


def test_model_prepare_takes_colour_images_channels_last():
    from cnn.architectures import build_architecture
    model = build_architecture("conv4k3p1-relu-flatten-dense2", 2, (3, 5, 6)).build(seed=0)
    model.normalization = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7]}
    x = np.random.default_rng(3).integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(model.prepare(x.transpose(0, 2, 3, 1)), model.prepare(x))
    with pytest.raises(ValueError, match=r"\(N, 3, 5, 6\) or \(N, 5, 6, 3\)"):
        model.prepare(x[:, :, :, :5])

