"""Request bodies -> model input, with a precise error for every bad input.

``POST /predict`` takes one batch of images in any of these forms:

* ``multipart/form-data``: one or more image files, under any field names
  (``file``, ``images``, ...), classified in the order they appear in the body.
  Every part must be a file (have a filename); a part with an empty filename
  and no content (a form's file input left empty) is skipped.
* ``application/json`` ``{"images": ["<base64>", ...]}``: base64-encoded image
  files (standard or URL-safe alphabet, padding optional, whitespace ignored) or
  ``data:image/...;base64,...`` URLs; a single string is one image.
* ``application/json`` ``{"pixels": [...]}``: raw pixels, one image (H x W or
  1 x H x W) or a batch (N x H x W or N x 1 x H x W), values 0-255, or 0-1
  when no value is > 1 (see ``cnn.images.pixels_from_array``); light object
  on a black background, never inverted or resized.
* ``image/*`` (``image/png``, ``image/jpeg``, ...): the body is one image file.

Image files are decoded by ``cnn.images.decode_image``: the format allow-list
(``cnn.images.ALLOWED_FORMATS``), the ``CNN_MAX_PIXELS`` limit checked from the
header before decoding (decompression bombs), grayscale, inverted when the
background is light (``invert=auto``) and fitted into the model's input size.

Every image of a batch is decoded; if any fails, the whole request is refused
with 400 and ``errors`` lists *every* bad image as ``{"index", "name", "error"}``
(index 0-based in input order, name the uploaded file name or null), so a
client can fix all of them at once. Nothing is classified in that case: a
partial answer would be easy to misread as a complete one.
"""
import base64
import binascii
import json

import numpy as np

from cnn.images import ALLOWED_FORMATS, ImageError, decode_image, pixels_from_array
from service.errors import ApiError


def read_json(request):
    """The request body parsed as JSON (400 when it is not JSON)."""
    data = request.get_data(cache=True)
    if not data.strip():
        raise ApiError(400, "the request body is empty; expected a JSON object")
    try:
        return json.loads(data)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def check_count(n, max_images):
    if n == 0:
        raise ApiError(400, "empty batch: send at least one image")
    if n > max_images:
        raise ApiError(413, f"too many images in one request: {n} (the limit is "
                            f"{max_images}, CNN_MAX_IMAGES); split the batch")


# --------------------------------------------------------------------------
# Encoded image files.

def multipart_items(request):
    """[(bytes, filename)] of the file parts, in body order."""
    fields = list(request.form.keys())
    if fields:
        key = fields[0]
        raise ApiError(400, f"multipart field {key!r} is not a file: send each image as a "
                            f"file part with a filename (curl -F '{key}=@image.png'); "
                            f"options go in the query string (?model=...&top_k=...)")
    items = []
    for _key, storage in getattr(request.files, "in_order", request.files.items(multi=True)):
        data = storage.read()
        if not storage.filename and not data:
            continue  # an empty file input of an HTML form
        items.append((data, storage.filename or None))
    return items


def base64_image(text):
    """The bytes of a base64 string or base64 data: URL (ValueError if not)."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma:
            raise ValueError("malformed data URL (no comma before the data)")
        if not header.lower().endswith(";base64"):
            raise ValueError("data URL is not base64-encoded (expected "
                             "'data:image/png;base64,...')")
    text = "".join(text.split())
    if not text:
        raise ValueError("empty base64 string")
    altchars = b"-_" if ("-" in text or "_" in text) else None
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64 ({exc})") from None


def decode_batch(items, served, max_pixels, invert, logger=None):
    """uint8 (N, H, W) from [(bytes or ValueError, name)]; ApiError listing every bad one."""
    _, h, w = served.input_shape
    pixels, errors = [], []
    for index, (data, name) in enumerate(items):
        if isinstance(data, Exception):
            errors.append({"index": index, "name": name, "error": str(data)})
            continue
        try:
            pixels.append(decode_image(data, size=(h, w), invert=invert,
                                       max_pixels=max_pixels,
                                       allowed_formats=ALLOWED_FORMATS))
        except ImageError as exc:
            errors.append({"index": index, "name": name, "error": exc.reason})
        except Exception as exc:  # noqa: BLE001 - an untrusted file must never cause a 500
            if logger is not None:
                logger.warning("unexpected error decoding image %d (%r)", index, name,
                               exc_info=True)
            errors.append({"index": index, "name": name,
                           "error": f"cannot decode image ({type(exc).__name__})"})
    if errors:
        n = len(items)
        what = "the image" if n == 1 else f"{len(errors)} of {n} images"
        raise ApiError(400, f"{what} could not be read; nothing was classified",
                       errors=errors)
    return np.stack(pixels)


def json_image_items(images, max_images):
    """[(bytes or ValueError, None)] of the "images" of a JSON body."""
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list):
        raise ApiError(400, f"'images' must be a list of base64 strings, got "
                            f"{_json_type(images)}")
    check_count(len(images), max_images)
    items = []
    for item in images:
        if not isinstance(item, str):
            items.append((ValueError(f"expected a base64 string, got "
                                     f"{_json_type(item)}"), None))
            continue
        try:
            items.append((base64_image(item), None))
        except ValueError as exc:
            items.append((exc, None))
    return items


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
               type(None): "null", int: "a number", float: "a number"}


def _json_type(value):
    return _type_name(type(value))


def _type_name(t):
    return _JSON_TYPES.get(t, t.__name__)


def nesting_depth(value, limit):
    """How deeply ``value``'s first elements nest lists, counting up to ``limit + 1``."""
    depth = 0
    while isinstance(value, list) and depth <= limit:
        depth += 1
        value = value[0] if value else None
    return depth


def json_pixels(pixels, served, max_images):
    """float32 (N, 1, H, W) in [0, 1] from the "pixels" of a JSON body."""
    _, h, w = served.input_shape
    if nesting_depth(pixels, 4) > 4:  # (NumPy cannot even iterate over 33+ dimensions)
        raise ApiError(400, f"pixels must have shape ({h}, {w}), (N, {h}, {w}) or "
                            f"(N, 1, {h}, {w}): it has more than 4 levels of lists")
    try:
        x = pixels_from_array(pixels, size=(h, w))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    check_count(len(x), max_images)
    return x


# --------------------------------------------------------------------------
# Open Inference Protocol tensors.

V2_DATATYPES = ("FP32", "UINT8")


def v2_tensor(tensor, served, max_images):
    """The model input of one $request_input: uint8 or float32 (N, C, H, W)."""
    if not isinstance(tensor, dict):
        raise ApiError(400, "each entry of 'inputs' must be an object")
    for key in ("name", "shape", "datatype", "data"):
        if key not in tensor:
            raise ApiError(400, f"input tensor is missing {key!r}")
    if not isinstance(tensor["name"], str):
        raise ApiError(400, "input 'name' must be a string")
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise ApiError(400, "input 'parameters' must be an object")
    if "binary_data_size" in params:
        raise ApiError(400, "the binary tensor data extension is not supported: send "
                            "'data' as a JSON list")
    datatype = tensor["datatype"]
    if datatype not in V2_DATATYPES:
        raise ApiError(400, f"input datatype must be one of {', '.join(V2_DATATYPES)}, got "
                            f"{datatype!r}")
    c, h, w = served.input_shape
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ApiError(400, f"input 'shape' must be a list of integers, got {shape!r}")
    allowed = f"[N, {c}, {h}, {w}]" + (f" or [N, {h}, {w}]" if c == 1 else "")
    if not ((len(shape) == 4 and shape[1:] == [c, h, w])
            or (len(shape) == 3 and c == 1 and shape[1:] == [h, w])):
        raise ApiError(400, f"input shape must be {allowed}, got {shape}")
    if shape[0] < 0:
        raise ApiError(400, f"input shape must not be negative, got {shape}")
    check_count(shape[0], max_images)
    values = _flat_values(tensor["data"])
    expected = shape[0] * c * h * w
    if values.size != expected:
        raise ApiError(400, f"input shape {shape} holds {expected} values but 'data' has "
                            f"{values.size}")
    if datatype == "FP32":
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ApiError(400, f"FP32 data must be finite numbers in [0, 1] (use UINT8 for "
                                f"0-255), found {values[i]:g} at flat index {i}")
        return values.astype(np.float32).reshape(shape[0], c, h, w)
    bad = ~np.isfinite(values) | (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        i = int(np.argmax(bad))
        raise ApiError(400, f"UINT8 data must be integers in [0, 255], found {values[i]:g} "
                            f"at flat index {i}")
    return values.astype(np.uint8).reshape(shape[0], c, h, w)


def _flat_values(data):
    """The numbers of flat or nested (rectangular) JSON ``data`` as float64 (n,)."""
    if not isinstance(data, list):
        raise ApiError(400, f"input 'data' must be a list, got {_json_type(data)}")
    if not data:
        return np.zeros(0)
    if nesting_depth(data, 4) > 4:
        raise ApiError(400, "input 'data' must be a flat list or nested as the shape (at "
                            "most 4 levels of lists)")
    try:
        obj = np.array(data, dtype=object)
    except (ValueError, TypeError):
        obj = None
    types = set() if obj is None else set(map(type, obj.flat))
    if obj is None or any(issubclass(t, (list, tuple)) for t in types):
        raise ApiError(400, "input 'data' must be a flat list or a rectangular nested list "
                            "of numbers (every row the same length)")
    for t in types:
        if issubclass(t, bool) or not issubclass(t, (int, float)):
            raise ApiError(400, f"input 'data' must hold numbers only, found "
                                f"{_type_name(t)}")
    try:
        return obj.astype(np.float64).ravel()
    except OverflowError:
        raise ApiError(400, "input 'data' holds an integer too large to represent") from None
