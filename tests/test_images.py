"""cnn.images: image files and raw pixel arrays as model input.

Every image is generated with Pillow in memory. The model's convention is a
light object on a black background (Fashion-MNIST); a typical product photo is
a dark object on white, which "auto" must invert.
"""
import io
import pickle
import re
import struct
import tracemalloc
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageFilter, ImageOps, features

import cnn.images.decode as decode_module
from cnn.images import (
    ALLOWED_FORMATS,
    MAX_PIXELS,
    ImageError,
    PixelBudgetError,
    decode_image,
    decode_images,
    pixels_from_array,
)
from cnn.images.png import _simple_png

LANCZOS = Image.Resampling.LANCZOS


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def dark_on_white(size=(60, 60), box=(15, 15, 44, 44), mode="RGB"):
    """A black square on white: the shape of a typical product photo."""
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).rectangle(box, fill="black")
    return im if mode == "RGB" else im.convert(mode)


def light_on_black(size=(60, 60), box=(15, 15, 44, 44)):
    """A white square on black: already Fashion-MNIST style."""
    im = Image.new("L", size, 0)
    ImageDraw.Draw(im).rectangle(box, fill=255)
    return im


def centre_and_corners(a):
    """Mean of the central 6x6 block and of the four 4x4 corners of a 28x28 output."""
    centre = a[11:17, 11:17].mean()
    corners = np.concatenate([a[:4, :4].ravel(), a[:4, -4:].ravel(),
                              a[-4:, :4].ravel(), a[-4:, -4:].ravel()]).mean()
    return centre, corners


def assert_light_object_on_black(a, centre_min=200, corner_max=30):
    assert a.dtype == np.uint8 and a.shape == (28, 28)
    centre, corners = centre_and_corners(a)
    assert centre >= centre_min, f"object should be light, centre mean {centre}"
    assert corners <= corner_max, f"background should be black, corner mean {corners}"


def centre_of_mass(a):
    a = a.astype(np.float64)
    rows, cols = np.indices(a.shape)
    return (rows * a).sum() / a.sum(), (cols * a).sum() / a.sum()


# --------------------------------------------------------------------------
# Formats and modes

FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "PPM"] + (["WEBP"] if features.check("webp")
                                                         else [])


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_allowed_format_decodes_dark_on_white_as_light_on_black(fmt):
    a = decode_image(encode(dark_on_white(), fmt))
    assert_light_object_on_black(a)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1"])
def test_each_mode_decodes_to_grayscale(mode):
    a = decode_image(encode(dark_on_white(mode=mode), "PNG"))
    assert_light_object_on_black(a)


def test_16_bit_grey_is_scaled_not_clipped():
    # 128 * 257 is mid grey in 16 bits; Pillow's own I;16 -> L conversion clips it to 255.
    im = Image.new("I;16", (30, 30), 128 * 257)
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    a = decode_image(data, invert=False)
    assert np.all(np.abs(a.astype(int) - 128) <= 1)

    obj = dark_on_white(mode="L")
    wide = Image.fromarray(np.asarray(obj).astype(np.uint16) * 257)  # I;16
    assert wide.mode == "I;16"
    assert_light_object_on_black(decode_image(encode(wide, "PNG")))


def test_cmyk_jpeg_decodes():
    assert_light_object_on_black(decode_image(encode(dark_on_white(mode="CMYK"), "JPEG")))


def test_multi_picture_jpeg_counts_as_jpeg():
    data = encode(dark_on_white(), "MPO", save_all=True,
                  append_images=[light_on_black().convert("RGB")])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert_light_object_on_black(decode_image(data))


def test_large_jpeg_is_decoded_scaled_down_and_still_correct():
    photo = dark_on_white(size=(3000, 2000), box=(1000, 500, 1999, 1499))
    a = decode_image(encode(photo, "JPEG", quality=90))
    assert_light_object_on_black(a)
    small = decode_image(encode(photo.resize((300, 200), LANCZOS), "PNG"))
    assert np.abs(a.astype(int) - small.astype(int)).max() <= 40


# --------------------------------------------------------------------------
# Inversion and background

def test_dark_on_white_is_inverted_under_auto_and_true_but_not_false():
    data = encode(dark_on_white(), "PNG")
    auto = decode_image(data)
    assert_light_object_on_black(auto)
    np.testing.assert_array_equal(decode_image(data, invert=True), auto)

    kept = decode_image(data, invert=False)
    centre, corners = centre_and_corners(kept)
    assert centre <= 30 and corners >= 225  # dark object on white, padding white too
    np.testing.assert_array_equal(kept, 255 - auto)


def test_light_on_black_stays_under_auto_and_false_and_is_inverted_by_true():
    data = encode(light_on_black(), "PNG")
    auto = decode_image(data)
    assert_light_object_on_black(auto)
    np.testing.assert_array_equal(decode_image(data, invert=False), auto)
    np.testing.assert_array_equal(decode_image(data, invert=True), 255 - auto)


def test_auto_uses_the_border_mean_threshold_127():
    for grey, inverted in ((127, False), (128, True)):
        im = Image.new("L", (40, 40), grey)
        ImageDraw.Draw(im).rectangle((10, 10, 29, 29), fill=0 if inverted else 255)
        a = decode_image(encode(im, "PNG"))
        corner = int(a[0, 0])
        assert corner == (255 - grey if inverted else grey), (grey, corner)


def test_fashion_mnist_style_input_round_trips():
    rng = np.random.default_rng(0)
    img = np.zeros((28, 28), np.uint8)
    img[4:24, 8:20] = rng.integers(100, 256, (20, 12))
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(img), "PNG")), img)


def test_transparent_background_becomes_black_for_a_dark_object():
    im = Image.new("RGBA", (50, 50), (255, 0, 0, 0))  # transparent, colour is garbage
    ImageDraw.Draw(im).rectangle((12, 12, 37, 37), fill=(0, 0, 0, 255))
    data = encode(im, "PNG")
    assert_light_object_on_black(decode_image(data))
    assert decode_image(data, invert=True)[0, 0] == 0  # transparent is background: black
    a = decode_image(data, invert=False)  # a black object on black
    assert a.max() <= 5


def test_transparent_background_keeps_a_light_object_light():
    im = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle((12, 12, 37, 37), fill=(240, 240, 240, 255))
    assert_light_object_on_black(decode_image(encode(im, "PNG")))
    la = Image.new("LA", (50, 50), (255, 0))
    ImageDraw.Draw(la).rectangle((12, 12, 37, 37), fill=(250, 255))
    assert_light_object_on_black(decode_image(encode(la, "PNG")))


def test_palette_transparency_counts_as_background():
    im = Image.new("P", (40, 40), 0)
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # 0 white (transparent), 1 black
    ImageDraw.Draw(im).rectangle((10, 10, 29, 29), fill=1)
    for fmt in ("PNG", "GIF"):
        data = encode(im, fmt, transparency=0)
        assert_light_object_on_black(decode_image(data))
        assert decode_image(data, invert=False).max() <= 5  # black square, black background


def test_partly_transparent_pixels_are_composited():
    im = Image.new("LA", (20, 20), (0, 0))
    ImageDraw.Draw(im).rectangle((5, 5, 14, 14), fill=(255, 128))  # white, half opaque
    a = decode_image(encode(im, "PNG"), invert=False)
    assert abs(int(a[14, 14]) - 128) <= 2 and a[0, 0] == 0


# --------------------------------------------------------------------------
# Geometry

def test_output_size_is_height_width():
    a = decode_image(encode(light_on_black(), "PNG"), size=(32, 20))
    assert a.shape == (32, 20) and a.dtype == np.uint8
    assert decode_image(encode(light_on_black(), "PNG"), size=12).shape == (12, 12)


def test_wide_image_is_centred_with_aspect_kept():
    im = Image.new("L", (100, 40), 0)
    ImageDraw.Draw(im).rectangle((30, 0, 69, 39), fill=255)  # a 40x40 square, full height
    a = decode_image(encode(im, "PNG"))
    # 100x40 -> 28x11, pasted at row (28 - 11) // 2 = 8; the square is ~11x11.
    assert a[:8].max() == 0 and a[19:].max() == 0
    rows, cols = np.nonzero(a > 127)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(height - width) <= 1 and 10 <= width <= 12
    r, c = centre_of_mass(a)
    assert abs(r - 13.5) <= 0.75 and abs(c - 13.5) <= 0.75

    ref = Image.new("L", (28, 28), 0)
    ref.paste(im.resize((28, 11), LANCZOS), (0, 8))
    np.testing.assert_array_equal(a, np.asarray(ref))


def test_tall_image_is_centred_with_aspect_kept():
    im = Image.new("L", (40, 100), 0)
    ImageDraw.Draw(im).rectangle((0, 30, 39, 69), fill=255)
    a = decode_image(encode(im, "PNG"))
    assert a[:, :8].max() == 0 and a[:, 19:].max() == 0
    r, c = centre_of_mass(a)
    assert abs(r - 13.5) <= 0.75 and abs(c - 13.5) <= 0.75


def test_padding_uses_the_background_colour():
    wide = dark_on_white(size=(100, 40), box=(40, 10, 59, 29))
    assert np.all(decode_image(encode(wide, "PNG"), invert=False)[:8] == 255)
    assert np.all(decode_image(encode(wide, "PNG"))[:8] == 0)


def test_small_image_is_scaled_up():
    a = decode_image(encode(light_on_black(size=(7, 7), box=(2, 2, 4, 4)), "PNG"))
    assert a.shape == (28, 28)
    assert a[12:16, 12:16].min() > 200 and a[:4, :4].max() < 30


def test_animated_gif_uses_the_first_frame():
    first = dark_on_white(box=(5, 20, 24, 39), mode="L")   # square on the left
    second = dark_on_white(box=(35, 20, 54, 39), mode="L")  # square on the right
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    a = decode_image(data)
    assert a[:, :14].mean() > 4 * a[:, 14:].mean()
    np.testing.assert_array_equal(a, decode_image(encode(first, "PNG")))


def test_exif_orientation_is_applied():
    stored = dark_on_white(size=(80, 40), box=(0, 0, 19, 19))  # mark at top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    a = decode_image(data)

    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert upright.size == (40, 80)
    expected = decode_image(encode(upright, "PNG"))
    assert np.abs(a.astype(int) - expected.astype(int)).max() <= 12
    # the mark is now at the top-right, and the content is portrait (padded left/right)
    assert a[:5, 14:20].mean() > 200 and a[:5, 7:14].mean() < 50
    assert a[:, :6].max() == 0 and a[:, 22:].max() == 0


# --------------------------------------------------------------------------
# Bad input

def noisy_png():
    rng = np.random.default_rng(1)
    return encode(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)), "PNG")


def test_truncated_png_is_rejected():
    data = noisy_png()
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[:len(data) // 2])


def test_truncation_check_holds_across_threads(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    good = noisy_png()
    cut = good[:len(good) // 2]

    def run(i):
        try:
            decode_image(cut if i % 2 else good)
            return "ok"
        except ImageError:
            return "error"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(64)))
    assert results == ["ok", "error"] * 32
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_truncated_png_is_rejected_even_if_pillow_is_told_to_load_truncated_images(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = noisy_png()
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[:len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is put back


@pytest.mark.parametrize("data", [b"hello", b"hello world, not an image\n" * 10,
                                  b'{"pixels": [[0, 1]]}', bytes(64)])
def test_non_images_are_rejected(data):
    with pytest.raises(ImageError, match="not a recognised image") as exc:
        decode_image(data, name="shoe.png")
    assert str(exc.value).startswith("image 'shoe.png': ")


def test_empty_data_is_rejected():
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")


def test_damaged_header_is_rejected():
    data = bytearray(encode(light_on_black(), "PNG"))
    data[12:16] = b"XXXX"  # IHDR chunk type
    with pytest.raises(ImageError, match="PNG"):
        decode_image(bytes(data))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_rejected_from_the_header(monkeypatch):
    data = encode(Image.new("1", (10000, 10000)), "PNG")
    assert len(data) < 100_000

    def no_load(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(ImageError, match=r"10000x10000 .*limit of 12,582,912 pixels"):
        decode_image(data)


def test_max_pixels_is_configurable():
    data = encode(light_on_black(size=(100, 100)), "PNG")
    with pytest.raises(ImageError, match="limit of 9,999 pixels"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).shape == (28, 28)
    assert MAX_PIXELS == 4096 * 3072  # (a 12-megapixel photo; see the comment on MAX_PIXELS)


def test_pillow_decompression_bomb_error_becomes_image_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow errors above 2000 pixels
    with pytest.raises(ImageError, match="pixels"):
        decode_image(encode(light_on_black(size=(100, 100)), "PNG"))


def test_pillow_decompression_bomb_warning_as_error_becomes_image_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    data = encode(light_on_black(size=(80, 80)), "PNG")  # 6400 pixels: Pillow only warns
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode_image(data).shape == (28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="pixels"):
            decode_image(data)


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA"])
def test_formats_outside_the_allow_list_are_rejected(fmt):
    data = encode(dark_on_white(size=(32, 32), box=(8, 8, 23, 23)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would read it
    with pytest.raises(ImageError, match="allowed"):
        decode_image(data)


def test_allow_list_is_configurable():
    ico = encode(dark_on_white(size=(32, 32), box=(8, 8, 23, 23)), "ICO")
    assert_light_object_on_black(decode_image(ico, allowed_formats={"ICO"}))
    jpeg = encode(dark_on_white(), "JPEG")
    with pytest.raises(ImageError, match=r"not an allowed image format \(looks like JPEG"):
        decode_image(jpeg, allowed_formats={"png"})
    assert "PNG" in ALLOWED_FORMATS and "ICO" not in ALLOWED_FORMATS


def test_bad_arguments_are_caller_errors():
    data = encode(light_on_black(), "PNG")
    with pytest.raises(ValueError, match="invert"):
        decode_image(data, invert="yes")
    with pytest.raises(ValueError, match="invert"):
        decode_image(data, invert=1)
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(data, max_pixels=0)
    with pytest.raises(ValueError, match="size"):
        decode_image(data, size=(28, 0))
    with pytest.raises(ValueError, match="allowed_formats.*'JPG'"):
        decode_image(data, allowed_formats={"JPG"})
    with pytest.raises(TypeError, match="data must be bytes or a file path"):
        decode_image(12345)
    with pytest.raises(TypeError, match="size"):
        decode_image(data, size="big")


# --------------------------------------------------------------------------
# Paths and batches

def test_paths_decode_and_name_themselves(tmp_path):
    good = tmp_path / "shirt.png"
    good.write_bytes(encode(dark_on_white(), "PNG"))
    assert_light_object_on_black(decode_image(good))
    assert_light_object_on_black(decode_image(str(good)))

    with pytest.raises(ImageError, match="cannot read file") as exc:
        decode_image(tmp_path / "missing.png")
    assert "missing.png" in str(exc.value)
    with pytest.raises(ImageError, match="cannot read file"):
        decode_image(tmp_path)  # a directory


def test_decode_images_stacks_a_batch(tmp_path):
    path = tmp_path / "light.png"
    path.write_bytes(encode(light_on_black(), "PNG"))
    items = [encode(dark_on_white(), "PNG"), path, encode(dark_on_white(), "JPEG")]
    batch = decode_images(items)
    assert batch.shape == (3, 28, 28) and batch.dtype == np.uint8
    for a in batch:
        assert_light_object_on_black(a)
    np.testing.assert_array_equal(batch[1], decode_image(path))
    assert decode_images(items[:1], size=(10, 12), invert=False).shape == (1, 10, 12)


def test_decode_images_errors_name_the_index_and_name(tmp_path):
    good = encode(light_on_black(), "PNG")
    with pytest.raises(ImageError) as exc:
        decode_images([good, good, b"hello"], names=["a.png", "b.png", "shoe.png"])
    assert str(exc.value).startswith("image 2 ('shoe.png'): not a recognised image")
    assert exc.value.index == 2 and exc.value.name == "shoe.png"

    with pytest.raises(ImageError, match=r"^image 1: not a recognised image"):
        decode_images([good, b"hello"])
    missing = tmp_path / "gone.png"
    with pytest.raises(ImageError, match=r"^image 0 \('.*gone.png'\): cannot read file"):
        decode_images([missing])


def test_decode_images_bad_arguments():
    good = encode(light_on_black(), "PNG")
    with pytest.raises(TypeError, match="single bytes"):
        decode_images(good)
    with pytest.raises(ValueError, match="at least one"):
        decode_images([])
    with pytest.raises(ValueError, match="names"):
        decode_images([good], names=["a", "b"])
    with pytest.raises(TypeError, match="names="):
        decode_images([good], name="a")
    with pytest.raises(TypeError, match="unexpected"):
        decode_images([good], colour=True)


def test_decode_images_on_error_reports_every_bad_item():
    good = encode(light_on_black(), "PNG")
    seen = []
    out = decode_images([good, b"junk", good, 42, b""], names=["a", "b", "c", "d", "e"],
                        on_error=lambda i, exc: seen.append((i, exc)))
    assert out.shape == (5, 28, 28)
    assert [i for i, _ in seen] == [1, 3, 4]
    assert isinstance(seen[0][1], ImageError) and seen[0][1].name == "b"
    assert isinstance(seen[1][1], TypeError)          # neither bytes nor a path
    assert "empty file" in seen[2][1].reason
    assert (out[1] == 0).all() and (out[3] == 0).all() and (out[4] == 0).all()
    assert (out[0] == decode_image(good)).all() and (out[2] == out[0]).all()
    with pytest.raises(TypeError, match="on_error"):
        decode_images([good], on_error="print")


@pytest.mark.parametrize("invert", ["auto", True, False])
@pytest.mark.parametrize("size", [(28, 28), (20, 24), (2, 5)])
def test_decode_images_equals_decode_image_one_by_one(invert, size):
    """The batch path (options checked once, inversion of same-size opaque images
    done on the whole batch) gives exactly decode_image's pixels."""
    rng = np.random.default_rng(7)
    items = []
    for i, (h, w) in enumerate([(28, 28), (20, 24), (2, 5), (40, 30), (28, 28), (9, 9)] * 3):
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        if i % 3 == 0:
            a = (a // 4 + 190).astype(np.uint8)            # light background: auto inverts
        im = Image.fromarray(a)
        if i % 4 == 1:
            im = im.convert("RGBA")
            im.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
        fmt = ["PNG", "BMP", "PNG", "JPEG", "WEBP", "TIFF"][i % 6]
        items.append(encode(im.convert("RGB") if fmt == "JPEG" else im, fmt))
    batch = decode_images(items, size=size, invert=invert)
    for item, got in zip(items, batch):
        assert (got == decode_image(item, size=size, invert=invert)).all()


def test_checked_options_are_reused_but_still_checked():
    good = encode(light_on_black(), "PNG")
    decode_image(good, invert=True, max_pixels=10_000)       # cached
    with pytest.raises(ValueError, match="invert"):
        decode_image(good, invert=1)                          # == True, but not True
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(good, max_pixels=True)
    assert decode_image(good, size=[28, 28]).shape == (28, 28)  # a list: not cached
    assert decode_image(good, allowed_formats=["png"]).shape == (28, 28)


# --------------------------------------------------------------------------
# The fast path for simple PNG files gives what Pillow's PNG plugin gives.

def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def grey_png(a, idat_pieces=1, extra=()):
    """A hand-made 8-bit grey PNG of ``a`` with its IDAT data in several chunks."""
    h, w = a.shape
    z = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in a))  # filter "None"
    cuts = np.linspace(0, len(z), idat_pieces + 1).astype(int)
    idats = b"".join(_chunk(b"IDAT", z[i:j]) for i, j in zip(cuts[:-1], cuts[1:]))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + b"".join(_chunk(k, d) for k, d in extra) + idats + _chunk(b"IEND", b""))


@pytest.fixture
def pillow_only(monkeypatch):
    """Decode without the fast path (what decode_image did before it existed)."""
    def decode(data, **kw):
        with monkeypatch.context() as m:
            m.setattr(decode_module, "_simple_png", lambda *a: None)
            try:
                return decode_image(data, **kw)
            except ImageError as exc:
                return exc.reason
    return decode


def fast_or_error(data, **kw):
    try:
        return decode_image(data, **kw)
    except ImageError as exc:
        return exc.reason


def same(a, b):
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.shape == b.shape and (a == b).all()


def test_simple_pngs_take_the_fast_path_with_pillows_pixels(pillow_only):
    rng = np.random.default_rng(3)
    for h, w in [(28, 28), (1, 1), (3, 70), (64, 48), (300, 200)]:
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        a[: h // 2] //= 3
        for data in (encode(Image.fromarray(a), "PNG"),
                     encode(Image.fromarray(a), "PNG", optimize=True),
                     encode(Image.fromarray(a), "PNG", compress_level=0),
                     grey_png(a, idat_pieces=3)):
            assert _simple_png(data, MAX_PIXELS) is not None
            assert (_simple_png(data, MAX_PIXELS) == a).all()
            for invert in ("auto", True, False):
                assert same(decode_image(data, invert=invert), pillow_only(data, invert=invert))


def test_other_pngs_are_left_to_pillow():
    a = np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 3
    declined = [
        encode(Image.fromarray(a).convert("RGB"), "PNG"),
        encode(Image.fromarray(a).convert("RGBA"), "PNG"),
        encode(Image.fromarray(a).convert("P"), "PNG"),
        encode(Image.fromarray(a).convert("1"), "PNG"),
        encode(Image.fromarray(a), "PNG", transparency=0),   # tRNS
        encode(Image.fromarray(a), "PNG", exif=exif.tobytes()),  # eXIf: orientation
        encode(Image.fromarray(a), "PNG", dpi=(72, 72)),      # pHYs
        grey_png(a, extra=[(b"tEXt", b"Comment\x00hi")]),
        grey_png(a) + b"trailing bytes",
        grey_png(a)[:-1],
    ]
    for data in declined:
        assert _simple_png(data, MAX_PIXELS) is None
    # ... and the EXIF orientation of a PNG is still applied (rotated 180 degrees)
    assert (decode_image(declined[5], invert=False) == a[::-1, ::-1]).all()
    assert _simple_png(encode(Image.fromarray(a), "PNG"), 28 * 28 - 1) is None


def test_damaged_simple_pngs_decode_or_fail_exactly_as_with_pillow(pillow_only, monkeypatch):
    """Every corruption (bit flips, cuts) gives Pillow's result or Pillow's error."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    good = encode(Image.fromarray(a), "PNG")
    variants = [good[:k] for k in range(0, len(good), 7)]
    for _ in range(300):
        b = bytearray(good)
        for pos in rng.integers(0, len(b), rng.integers(1, 4)):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        variants.append(bytes(b))
    for data in variants:
        assert same(fast_or_error(data), pillow_only(data))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for data in variants[::5]:
        assert same(fast_or_error(data), pillow_only(data))


def test_simple_png_respects_pillows_pixel_limit(monkeypatch):
    a = np.zeros((100, 100), np.uint8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow errors above 2000 pixels
    assert _simple_png(grey_png(a), MAX_PIXELS) is None
    with pytest.raises(ImageError, match="pixels"):
        decode_image(grey_png(a))


# --------------------------------------------------------------------------
# Cost (issue 9): the work per image follows the model's input, not the upload.

def wide_png(width, height, depth=16, color=0, pixel=b"\x75\x30", extra=()):
    """A PNG of any size and bit depth repeating ``pixel`` (its bytes, as
    many pixels as they hold), written row by row: 6000x6000 16-bit grey is
    ~80 KB, 72 MB of pixels."""
    z = zlib.compressobj(6)
    row = b"\x00" + (pixel * width)[:width * {0: 1, 2: 3, 4: 2, 6: 4}[color] * depth // 8]
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
            + b"".join(_chunk(k, d) for k, d in extra) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def no_load(*args, **kwargs):
    raise AssertionError("pixels were decoded")


def traced_peak(fn):
    """Peak bytes allocated through tracemalloc while fn() runs: NumPy's
    arrays are traced, Pillow's own image memory is not."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_16_bit_png_of_issue_9_is_refused_from_its_header(monkeypatch):
    data = wide_png(6000, 6000)  # 2.2 s and +1.2 GiB of RSS before the fix
    assert len(data) < 100_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(ImageError, match=r"6000x6000 = 36,000,000 pixels is over the limit of "
                                         r"12,582,912"):
        decode_image(data)


@pytest.mark.parametrize("pixel, extra", [
    (b"\x75\x30", ()),                                   # 16-bit grey
    (b"\x75\x30\x00\x00", ((b"tRNS", b"\x00\x00"),)),    # ... with a transparent grey value
], ids=["grey16", "grey16-tRNS"])
def test_16_bit_png_is_not_converted_to_float_at_full_size(monkeypatch, pixel, extra):
    width, height = 2000, 1500  # 3 M pixels: float64 copies at full size are 24 MB each
    data = wide_png(width, height, pixel=pixel, extra=extra)
    peak = traced_peak(lambda: decode_image(data))
    # (with tRNS, the uint16 pixels, a uint32 copy and the grey and alpha
    # bytes exist at full size: ~9 bytes a pixel; converting to float64 took 27)
    assert peak < (10 if extra else 1) * width * height, peak
    with monkeypatch.context() as m:
        m.setattr(decode_module, "_reduce_factors", lambda w, h, fit: (1, 1))
        full_size = decode_image(data)
    assert np.abs(decode_image(data).astype(int) - full_size.astype(int)).max() <= 1


def photo(size, mode, seed=0):
    """A noisy, blurred product photo (dark ellipse and red box on off-white)
    of any size in any mode; RGBA is transparent outside the ellipse."""
    w, h = size
    im = Image.new("RGB", size, (235, 232, 228))
    draw = ImageDraw.Draw(im)
    draw.ellipse((w * 0.2, h * 0.15, w * 0.8, h * 0.85), fill=(60, 40, 90))
    draw.rectangle((w * 0.4, h * 0.3, w * 0.6, h * 0.7), fill=(150, 30, 20))
    noise = np.random.default_rng(seed).integers(-12, 13, (h, w, 3))
    im = Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype(np.uint8))
    im = im.filter(ImageFilter.GaussianBlur(1))
    if mode == "RGBA":
        alpha = Image.new("L", size, 0)
        ImageDraw.Draw(alpha).ellipse((w * 0.2, h * 0.15, w * 0.8, h * 0.85), fill=255)
        im.putalpha(alpha)
        return im
    if mode == "I;16":
        return Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)
    if mode in ("P", "P-trns"):
        return im.quantize(64)
    return im.convert(mode)


@pytest.mark.parametrize("size", [(100, 80), (300, 200), (640, 480)])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "P-trns", "I;16", "CMYK"])
def test_reducing_before_converting_matches_converting_at_full_size(monkeypatch, mode, size):
    """Large images are box-reduced in their own mode, then converted: the
    same result as converting at full size and resizing (the old path), to
    one grey level; images too small to be reduced are unchanged exactly."""
    im = photo(size, mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "LA" else "PNG")
    data = encode(im, fmt, **({"transparency": 0} if mode == "P-trns" else {}))
    reduced = decode_image(data)
    with monkeypatch.context() as m:
        m.setattr(decode_module, "_reduce_factors", lambda w, h, fit: (1, 1))
        full_size = decode_image(data)
    diff = np.abs(reduced.astype(int) - full_size.astype(int))
    assert diff.max() <= (0 if size == (100, 80) else 1), diff.max()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_modes_are_converted_to_grey_after_reducing(monkeypatch, mode):
    """Opaque images become grey after reducing; transparent ones only become
    1-byte grey and alpha at full size (to be reduced premultiplied), and
    16-bit grey 32-bit "I": no wider copy at full size, no float64."""
    im = photo((900, 600), "L" if mode in ("I", "F") else mode)
    if mode in ("I", "F"):
        im = im.convert(mode)
    data = encode(im, "TIFF")
    converted = []
    convert = Image.Image.convert

    def spy(self, target=None, *args, **kwargs):
        converted.append((self.mode, self.width * self.height, target))
        return convert(self, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", spy)
    assert decode_image(data).shape == (28, 28)
    full_size = [target for _, pixels, target in converted if pixels > 900 * 600 // 9]
    assert full_size == {"RGBA": ["L"], "LA": ["L"], "I;16": ["I"]}.get(mode, []), converted
    assert traced_peak(lambda: decode_image(data)) < 900 * 600  # no full-size NumPy copy


def test_rotated_large_jpeg_is_reduced_upright():
    stored = dark_on_white(size=(800, 400), box=(0, 0, 199, 199))  # mark at top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    expected = decode_image(encode(upright, "PNG"))
    assert np.abs(decode_image(data).astype(int) - expected.astype(int)).max() <= 12


def test_batch_pixel_budget_is_checked_from_the_headers_before_decoding(monkeypatch):
    rgb = encode(dark_on_white(size=(100, 100)), "PNG")  # 10,000 pixels (Pillow)
    grey = grey_png(np.zeros((50, 40), np.uint8))        # 2,000 pixels (the fast path)
    items = [rgb, grey, rgb]
    assert decode_images(items, max_total_pixels=22_000).shape == (3, 28, 28)
    monkeypatch.setattr(decode_module, "_load", no_load)
    for on_error in (None, lambda i, e: None):  # (a batch error, whatever on_error)
        with pytest.raises(PixelBudgetError, match=r"the 3 images have 22,000 pixels in all "
                                                   r".* limit of 21,999 pixels") as info:
            decode_images(items, max_total_pixels=21_999, on_error=on_error)
        assert (info.value.total, info.value.limit, info.value.count) == (22_000, 21_999, 3)
    assert isinstance(info.value, ValueError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)


def test_batch_pixel_budget_counts_readable_images_and_reports_the_rest(tmp_path):
    rgb = encode(dark_on_white(size=(100, 100)), "PNG")
    errors = []
    out = decode_images([rgb, b"not an image", rgb], max_total_pixels=20_000,
                        on_error=lambda i, e: errors.append((i, type(e))))
    assert errors == [(1, ImageError)] and out[1].max() == 0
    np.testing.assert_array_equal(out[0], decode_image(rgb))
    with pytest.raises(ImageError, match="image 1: not a recognised image"):
        decode_images([rgb, b"not an image"], max_total_pixels=10**9)
    paths = []
    for i, data in enumerate([rgb, grey_png(np.full((30, 30), 9, np.uint8)), rgb]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    np.testing.assert_array_equal(decode_images(paths, max_total_pixels=21_000),
                                  decode_images(paths))


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "100"])
def test_bad_max_total_pixels_is_a_caller_error(bad):
    with pytest.raises(ValueError, match="max_total_pixels must be a positive int"):
        decode_images([encode(light_on_black(), "PNG")], max_total_pixels=bad)


def test_image_error_is_a_value_error_and_pickles():
    assert issubclass(ImageError, ValueError)
    err = ImageError("broken", index=3, name="x.png")
    assert str(err) == "image 3 ('x.png'): broken"
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and (copy.reason, copy.index, copy.name) == ("broken", 3, "x.png")


# --------------------------------------------------------------------------
# pixels_from_array

def image_list(scale=255, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (28, 28))
    return (a if scale == 255 else a / 255.0).tolist()


def test_pixels_accepts_one_image_in_every_form():
    img = image_list()
    expected = np.asarray(img, np.float64)[None, None] / 255
    for form in (img, [img], [[img]], np.asarray(img, np.uint8), np.asarray(img, np.float64),
                 np.asarray([img], np.int64), tuple(tuple(r) for r in img)):
        x = pixels_from_array(form)
        assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
        np.testing.assert_allclose(x, expected, atol=1e-7)


def test_pixels_accepts_batches():
    batch = [image_list(seed=s) for s in range(3)]
    expected = np.asarray(batch, np.float64)[:, None] / 255
    for form in (batch, [[b] for b in batch], np.asarray(batch, np.uint8),
                 np.asarray(batch, np.float32)[:, None]):
        x = pixels_from_array(form)
        assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32
        np.testing.assert_allclose(x, expected, atol=1e-6)


def test_pixels_scale_0_1_is_kept_and_0_255_is_divided():
    unit = image_list(scale=1)
    np.testing.assert_allclose(pixels_from_array(unit)[0, 0], np.asarray(unit), atol=1e-7)
    assert pixels_from_array(np.ones((28, 28))).max() == 1.0
    assert pixels_from_array(np.full((28, 28), 255, np.uint8)).max() == 1.0
    # non-integer values on the 0-255 scale are fine; the decision is per batch
    mixed = [np.full((28, 28), 0.5), np.full((28, 28), 127.5)]
    np.testing.assert_allclose(pixels_from_array(mixed)[:, 0, 0, 0], [0.5 / 255, 0.5])
    np.testing.assert_allclose(pixels_from_array(np.array(image_list()).tolist()).max(),
                               max(max(r) for r in image_list()) / 255)


def test_pixels_other_size():
    assert pixels_from_array(np.zeros((2, 16, 8)), size=(16, 8)).shape == (2, 1, 16, 8)
    with pytest.raises(ValueError, match=r"pixels must have shape \(16, 8\)"):
        pixels_from_array(np.zeros((2, 8, 16)), size=(16, 8))


def bad(value, kind):
    img = np.zeros((28, 28), object)
    img[3, 4] = value
    return img.tolist() if kind == "list" else img


@pytest.mark.parametrize("value, message", [
    (float("nan"), "finite"), (float("inf"), "finite"), (-float("inf"), "finite"),
    (True, "boolean"), (np.bool_(False), "boolean"), ("12", "found a str"),
    (None, "null"), ({}, "found a dict"), (-1, r"\[0, 255\].*-1 at index \(3, 4\)"),
    (256, r"\[0, 255\].*256"), (255.5, r"\[0, 255\]"), (10 ** 400, "too large"),
])
def test_pixels_rejects_bad_values(value, message):
    for kind in ("list", "array"):
        with pytest.raises(ValueError, match=message) as exc:
            pixels_from_array(bad(value, kind))
        assert "pixels" in str(exc.value)


def test_pixels_rejects_bad_dtypes():
    with pytest.raises(ValueError, match="boolean"):
        pixels_from_array(np.zeros((28, 28), bool))
    with pytest.raises(ValueError, match="dtype <U"):
        pixels_from_array(np.full((28, 28), "1"))
    with pytest.raises(ValueError, match="dtype complex"):
        pixels_from_array(np.zeros((28, 28), complex))
    with pytest.raises(ValueError, match="finite"):
        pixels_from_array(np.full((1, 28, 28), np.nan, np.float32))


def test_pixels_rejects_ragged_lists():
    img = image_list()
    ragged_row = [row[:] for row in img]
    ragged_row[5] = ragged_row[5][:-1]
    ragged_batch = [img, img[:-1]]
    deep = [row[:] for row in img]
    deep[0] = deep[0][:-1] + [[1]]
    for ragged in (ragged_row, ragged_batch, deep):
        with pytest.raises(ValueError, match="pixels must be a rectangular nested list"):
            pixels_from_array(ragged)


@pytest.mark.parametrize("shape", [(27, 28), (28, 27), (784,), (2, 2, 28, 28), (1, 1, 1, 28, 28),
                                   (28, 28, 1), (28, 28, 3), ()])
def test_pixels_rejects_wrong_shapes(shape):
    with pytest.raises(ValueError, match=rf"pixels must have shape .*got {re.escape(str(shape))}"):
        pixels_from_array(np.zeros(shape))


@pytest.mark.parametrize("empty", [[], [[]], np.zeros((0, 28, 28)), np.zeros((0, 1, 28, 28))])
def test_pixels_rejects_empty(empty):
    with pytest.raises(ValueError, match="pixels is empty"):
        pixels_from_array(empty)


@pytest.mark.parametrize("value", ["[[0, 1]]", b"\x00" * 784, 3, 2.5, None, {"a": 1}, True])
def test_pixels_rejects_non_arrays(value):
    with pytest.raises(ValueError, match="pixels must be a nested list of numbers"):
        pixels_from_array(value)


def test_pixels_does_not_modify_the_input():
    a = np.full((28, 28), 200.0)
    pixels_from_array(a)
    assert a[0, 0] == 200.0



def test_pixels_uint8_shortcut_matches_the_float64_rule():
    """uint8 arrays are scaled in float32: the same numbers as the float64 route."""
    every = np.arange(256, dtype=np.uint8)
    assert ((every.astype(np.float32) / np.float32(255))
            == (every.astype(np.float64) / 255.0).astype(np.float32)).all()
    a = np.resize(every, (4, 28, 28))
    got = pixels_from_array(a)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (4, 1, 28, 28)
    assert (got == pixels_from_array(a.astype(np.float64))).all()
    binary = (a > 127).astype(np.uint8)                      # only 0 and 1: the 0-1 scale
    assert (pixels_from_array(binary) == binary[:, None]).all()
    fortran = np.asfortranarray(a)
    assert pixels_from_array(fortran).flags.c_contiguous
