"""Request bodies -> model input, with a precise error for every bad input.

``POST /predict`` takes one batch of images in any of these forms:

* ``multipart/form-data``: one or more image files, under any field names
  (``file``, ``images``, ...), classified in the order they appear in the body.
  Every part must be a file (have a filename); a part with an empty filename
  and no content (a form's file input left empty) is skipped. A part whose
  file name ends in ``.npy`` (or whose Content-Type is ``application/x-npy``)
  is a NumPy array as below and adds its N images (named ``name.npy[i]``).
* ``application/json`` ``{"images": ["<base64>", ...]}``: base64-encoded image
  files (standard or URL-safe alphabet, padding optional, whitespace ignored) or
  ``data:image/...;base64,...`` URLs; a single string is one image.
* ``application/json`` ``{"pixels": [...]}``: raw pixels, one image (H x W or
  1 x H x W) or a batch (N x H x W or N x 1 x H x W) for a grayscale model;
  for a colour (RGB) model N x 3 x H x W or N x H x W x 3 (channels-last, as
  Pillow and Keras give them), or one image 3 x H x W or H x W x 3. Values
  0-255, or 0-1 when no value is > 1 (see ``cnn.images.pixels_from_array``);
  already model input: never inverted or resized.
* ``application/x-npy``: the body is one array written by ``np.save``, uint8
  or float, of the shapes above: the
  compact binary form of ``{"pixels": ...}``, with the same value rule. Read
  with ``allow_pickle=False`` after its header (dtype, shape, image count,
  data size) was checked; see :func:`npy_pixels`.
* ``image/*`` (``image/png``, ``image/jpeg``, ...): the body is one image file.

Image files are decoded by ``cnn.images.decode_images`` (one image at a time
as ``decode_image``, the options checked once per batch): the format allow-list
(``cnn.images.ALLOWED_FORMATS``), the ``CNN_MAX_PIXELS`` limit checked from the
header before decoding (decompression bombs), then the model's own pipeline
(``cnn.images.upload_policy``): for a model trained on an image folder, the very
function that decoded its training images (grayscale or RGB, short side
resized, centre-cropped); for Fashion-MNIST-style models, grayscale, inverted
when the background is light (``invert=auto``) and fitted into the input size.
Every header of a request is read before any image is decoded: more than
``CNN_MAX_REQUEST_PIXELS`` pixels in all is 413 (see :func:`decode_batch`).

Every image of a batch is decoded; if any fails, the whole request is refused
with 400 and ``errors`` lists *every* bad image as ``{"index", "name", "error"}``
(index 0-based in input order, name the uploaded file name or null), so a
client can fix all of them at once. Nothing is classified in that case: a
partial answer would be easy to misread as a complete one. Asked for with
``?partial=true``, the readable images are classified and the bad ones listed
the same way beside them (see ``service.api.predict``).
"""
import base64
import binascii
import io
import json
import math

import numpy as np
from flask import current_app

from cnn._npy import NpyHeaderError, read_npy_header
from cnn.images import (
    ALLOWED_FORMATS,
    ImageError,
    PixelBudgetError,
    decode_images,
    pixels_from_array,
)
from service.errors import ApiError
from service.multipart import simple_file_parts

# Slack over the values a full batch needs, for the commas between keys, inputs
# and the data: URLs of base64 images.
JSON_SEPARATOR_SLACK = 4096


def json_value_limit(served, max_images):
    """Most array values one JSON body may hold for ``served``: a full batch."""
    return max_images * math.prod(served.input_shape) + JSON_SEPARATOR_SLACK


def read_json(request, max_values=None):
    """The request body parsed as JSON (400 when it is not JSON).

    ``max_values``: refuse (413) a body with more commas than that before
    parsing it. Python's parser turns each number into an object in a list:
    a 16 MiB body of pixel values cost 1.4-1.6 s of CPU and 270-290 MiB before
    it could be refused for its image count; counting commas costs ~5 ms, and
    a batch the service accepts (CNN_MAX_IMAGES x the input size) always fits."""
    data = request.get_data(cache=True)
    if not data.strip():
        raise ApiError(400, "the request body is empty; expected a JSON object")
    if max_values is not None and data.count(b",") > max_values:
        raise ApiError(413, f"the JSON body holds more than {max_values:,} values, more than "
                            f"a batch of CNN_MAX_IMAGES images of the model's input size; "
                            f"split the batch (or send it as application/x-npy)")
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
    """[(bytes, filename, is_npy)] of the file parts, in body order.

    Canonical bodies of file parts are split by service.multipart (fast);
    anything else goes through werkzeug's parser, as does every error."""
    parts = simple_file_parts(request.get_data(cache=True),
                              request.mimetype_params.get("boundary"),
                              current_app.config["MAX_FORM_PARTS"])
    if parts is not None:
        return [(data, filename or None, is_npy_part(filename, ctype))
                for _name, filename, ctype, data in parts if filename or data]
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
        items.append((data, storage.filename or None,
                      is_npy_part(storage.filename, storage.content_type)))
    return items


def multipart_batch(parts, served, max_pixels, invert, max_images, logger=None,
                    partial=False):
    """(model input, names) of the multipart file parts: image files, and .npy
    arrays that each add their N images (named ``file.npy[i]``), in body order.

    Only image files: uint8 (N, H, W) or (N, H, W, 3), decoded as one batch.
    With .npy parts: float32 (N, C, H, W) in [0, 1] (the images as uint8 / 255,
    exactly the model's own conversion).

    ``partial``: (x, names, kept, errors) as :func:`decode_batch` gives them,
    positions and names in the whole batch. A bad .npy part is still a
    request error: its image count is unknown, so the positions after it are too."""
    if not any(npy for _, _, npy in parts):
        check_count(len(parts), max_images)
        items = [(data, name) for data, name, _ in parts]
        names = [n for _, n in items]
        if partial:
            x, kept, errors = decode_batch(items, served, max_pixels, invert, logger,
                                           partial=True)
            return x, names, kept, errors
        return decode_batch(items, served, max_pixels, invert, logger), names
    chunks, names, files = [], [], []   # files: (position in names, bytes, name)
    for index, (data, name, npy) in enumerate(parts):
        if npy:
            label = f"file {index}" + (f" ({name!r})" if name else "")
            x = npy_pixels(data, served, max_images, what=label)
            chunks.append(x)
            names.extend(f"{name or 'array'}[{i}]" for i in range(len(x)))
        else:
            chunks.append(None)
            files.append((len(names), data, name))
            names.append(name)
        check_count(len(names), max_images)  # (413 before decoding anything)
    decoded, file_kept, errors = iter(()), [], []
    if files:
        try:
            result = decode_batch([(data, name) for _, data, name in files], served,
                                  max_pixels, invert, logger, partial=partial)
        except ApiError as exc:  # report the images' positions in the whole batch
            if "errors" not in exc.extra:
                raise  # (413: over the request's pixel budget)
            for e in exc.extra.get("errors", []):
                e["index"] = files[e["index"]][0]
            n = len(names)
            exc.message = (f"{len(exc.extra['errors'])} of {n} images could not be read; "
                           f"nothing was classified")
            raise
        pixels, file_kept, errors = result if partial else (result, range(len(files)), [])
        for e in errors:
            e["index"] = files[e["index"]][0]
        if file_kept:
            pixels = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
            decoded = iter(pixels.astype(np.float32) / np.float32(255.0))
    readable = {files[k][0] for k in file_kept}
    out, kept, position = [], [], 0
    for chunk in chunks:
        if chunk is not None:
            out.append(chunk)
            kept.extend(range(position, position + len(chunk)))
            position += len(chunk)
            continue
        if position in readable:
            out.append(next(decoded)[None])
            kept.append(position)
        position += 1
    x = np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
    return (x, names, kept, errors) if partial else (x, names)


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


def decode_batch(items, served, max_pixels, invert, logger=None, max_request_pixels=None,
                 partial=False):
    """uint8 (N, H, W) (grayscale models) or (N, H, W, 3) (RGB) from [(bytes or
    ValueError, name)], decoded as the model's upload policy says (``invert``
    None: the model's default); ApiError listing every bad one.

    ``partial``: the bad ones are no error; returns (x, kept, errors): the
    readable images, their positions in ``items`` and the errors list (the
    caller decides what no readable image at all means).

    Every header is read before anything is decoded: images with more than
    ``max_request_pixels`` pixels in all (default: the app's
    ``CNN_MAX_REQUEST_PIXELS``) are 413, which bounds the CPU of a request as
    ``max_pixels`` (``CNN_MAX_PIXELS``) bounds the memory of one image."""
    policy = served.uploads
    if max_request_pixels is None:
        max_request_pixels = current_app.config["CNN_MAX_REQUEST_PIXELS"]
    errors, good = [], []
    for index, (data, name) in enumerate(items):
        if isinstance(data, Exception):
            errors.append({"index": index, "name": name, "error": str(data)})
        else:
            good.append(index)

    def on_error(k, exc):  # k: position in ``good``
        index = good[k]
        name = items[index][1]
        if isinstance(exc, ImageError):
            reason = exc.reason
        else:  # an untrusted file must never cause a 500
            if logger is not None:
                logger.warning("unexpected error decoding image %d (%r)", index, name,
                               exc_info=exc)
            reason = f"cannot decode image ({type(exc).__name__})"
        errors.append({"index": index, "name": name, "error": reason})

    x = None
    if good:
        try:
            x = decode_images([items[i][0] for i in good], **policy.decode_options(invert),
                              max_pixels=max_pixels, allowed_formats=ALLOWED_FORMATS,
                              on_error=on_error, max_total_pixels=max_request_pixels)
        except PixelBudgetError as exc:
            raise ApiError(413, f"the {exc.count} images of this request have "
                                f"{exc.total:,} pixels in all (width x height), over the "
                                f"limit of {exc.limit:,} (CNN_MAX_REQUEST_PIXELS): send "
                                f"fewer or smaller images per request") from None
    errors.sort(key=lambda e: e["index"])
    if partial:
        bad = {e["index"] for e in errors}
        rows = [k for k, index in enumerate(good) if index not in bad]
        kept = [good[k] for k in rows]
        return (x[rows] if x is not None else None), kept, errors
    if errors:
        n = len(items)
        what = "the image" if n == 1 else f"{len(errors)} of {n} images"
        raise ApiError(400, f"{what} could not be read; nothing was classified",
                       errors=errors)
    return x


def json_image_items(images, max_images):
    """[(bytes or ValueError, None)] of the "images" of a JSON body."""
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list):
        raise ApiError(400, f"'images' must be a list of base64 strings, got "
                            f"{json_type(images)}")
    check_count(len(images), max_images)
    items = []
    for item in images:
        if not isinstance(item, str):
            items.append((ValueError(f"expected a base64 string, got "
                                     f"{json_type(item)}"), None))
            continue
        try:
            items.append((base64_image(item), None))
        except ValueError as exc:
            items.append((exc, None))
    return items


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
               type(None): "null", int: "a number", float: "a number"}


def json_type(value):
    return type_name(type(value))


def type_name(t):
    return _JSON_TYPES.get(t, t.__name__)


def nesting_depth(value, limit):
    """How deeply ``value``'s first elements nest lists, counting up to ``limit + 1``."""
    depth = 0
    while isinstance(value, list) and depth <= limit:
        depth += 1
        value = value[0] if value else None
    return depth


def json_pixels(pixels, served, max_images):
    """float32 (N, C, H, W) in [0, 1] from the "pixels" of a JSON body."""
    c, h, w = served.input_shape
    if nesting_depth(pixels, 4) > 4:  # (NumPy cannot even iterate over 33+ dimensions)
        raise ApiError(400, f"pixels must have shape {_pixel_shapes(c, h, w)}: it has more "
                            f"than 4 levels of lists")
    try:
        x = pixels_from_array(pixels, size=(h, w), channels=c)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    check_count(len(x), max_images)
    return x


# --------------------------------------------------------------------------
# NumPy .npy arrays (application/x-npy bodies and .npy multipart parts).

NPY_CONTENT_TYPE = "application/x-npy"
_NPY_MAGIC = b"\x93NUMPY"


def is_npy_part(filename, content_type):
    """Is a multipart file part a .npy array (by file name or Content-Type)?"""
    return ((filename or "").lower().endswith(".npy")
            or (content_type or "").split(";")[0].strip().lower() == NPY_CONTENT_TYPE)


def npy_pixels(body, served, max_images, what="the request body"):
    """float32 (N, C, H, W) in [0, 1] from the bytes of a .npy file.

    The header is read and checked before any pixel is: a .npy file (not .npz,
    not a pickle), format version 1 or 2, dtype uint8 or float (no object,
    structured or other dtypes: nothing is ever unpickled), one of the shapes
    of {"pixels": ...} (:func:`_pixel_shapes`), 1..max_images images (413 above),
    and exactly as many data bytes as the header declares (a truncated or
    padded file is refused). The pixels are then the body's data bytes viewed
    as that dtype and shape (``np.frombuffer``: no second header parse, never
    a pickle) and treated as the JSON "pixels" are
    (``cnn.images.pixels_from_array``: finite, 0-255, or 0-1 when no value is
    > 1; never inverted or resized).
    """
    c, h, w = served.input_shape
    if not body:
        raise ApiError(400, f"{what} is empty (0 bytes); send a file written by np.save")
    if not body.startswith(_NPY_MAGIC):
        if body.startswith(b"PK\x03\x04"):
            raise ApiError(400, f"{what} is an .npz archive; send one array written by "
                                f"np.save (a .npy file)")
        raise ApiError(400, f"{what} is not a .npy file (it does not start with the NumPy "
                            f"magic bytes \\x93NUMPY); write it with np.save")
    fp = io.BytesIO(body)
    try:
        shape, dtype, fortran = read_npy_header(fp, with_order=True)
    except NpyHeaderError as exc:
        raise ApiError(400, f"{what} has an unreadable header ({exc})") from None
    if dtype.hasobject:
        raise ApiError(400, f"{what} holds Python objects (dtype {dtype}): object arrays "
                            f"and pickles are not accepted; send uint8 or float pixels")
    if dtype.names is not None or dtype.subdtype is not None \
            or not (dtype.kind == "f" or (dtype.kind == "u" and dtype.itemsize == 1)):
        raise ApiError(400, f"{what} has dtype {dtype}; send uint8 (0-255) or float "
                            f"(float32/float64, 0-1 or 0-255) pixels")
    n = _npy_images(tuple(shape), c, h, w)
    if n is None:
        raise ApiError(400, f"{what} must have shape {_pixel_shapes(c, h, w)}, got "
                            f"{tuple(shape)}")
    check_count(n, max_images)
    data_bytes = n * c * h * w * dtype.itemsize
    have = len(body) - fp.tell()
    if have != data_bytes:
        problem = "is truncated" if have < data_bytes else "has extra bytes after its data"
        raise ApiError(400, f"{what} {problem}: its header declares {tuple(shape)} "
                            f"{dtype} = {data_bytes:,} bytes of data, the file has "
                            f"{have:,}")
    # The data as the header declared it, without a second parse of the header
    # (np.load would redo it: ~7% of a worker's time on batch-1 .npy requests).
    arr = np.frombuffer(body, dtype=dtype, count=n * c * h * w, offset=fp.tell()) \
        .reshape(shape, order="F" if fortran else "C")
    try:
        return pixels_from_array(arr, size=(h, w), channels=c)
    except ValueError as exc:
        raise ApiError(400, f"{what}: {exc}") from None


def _pixel_shapes(c, h, w):
    """The array shapes a model of input (c, h, w) takes, as text."""
    if c == 1:
        return f"({h}, {w}), (N, {h}, {w}) or (N, 1, {h}, {w})"
    return (f"(N, {c}, {h}, {w}) or (N, {h}, {w}, {c}) (or ({c}, {h}, {w}) or "
            f"({h}, {w}, {c}) for one image)")


def _npy_images(shape, c, h, w):
    """How many images an array of ``shape`` holds for input (c, h, w), or None
    when the shape is not one of _pixel_shapes."""
    if c == 1:
        if 2 <= len(shape) <= 4 and shape[-2:] == (h, w) \
                and (len(shape) != 4 or shape[1] == 1):
            return 1 if len(shape) == 2 else shape[0]
        return None
    if len(shape) == 3 and shape in ((c, h, w), (h, w, c)):
        return 1
    if len(shape) == 4 and shape[1:] in ((c, h, w), (h, w, c)):
        return shape[0]
    return None
