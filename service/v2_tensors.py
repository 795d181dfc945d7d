"""Open Inference Protocol (KServe V2) request tensors -> model input.

Every numeric V2 datatype is taken as pixels: integer types hold 0-255 (as UINT8
always did), float types 0-1 (as FP32); values are range-checked and converted, so a
client sending the INT64 or FP64 arrays NumPy made by default gets the same answer
as with UINT8/FP32. Binary tensor data (the binary tensor data extension) is
little-endian, as Triton's clients write it. Split from :mod:`service.inputs`, which
holds the /predict bodies and the helpers both use.
"""
import json

import numpy as np

from service.errors import ApiError
from service.inputs import check_count, json_type, nesting_depth, type_name

V2_INTEGER_TYPES = {"UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
                    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8"}
# BF16 is the high half of an FP32: read as uint16, shifted into float32
V2_FLOAT_TYPES = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "BF16": "<u2"}
V2_DATATYPES = (*V2_INTEGER_TYPES, *V2_FLOAT_TYPES)
_V2_REFUSED = {"BYTES": "strings are not pixels", "BOOL": "booleans are not pixels"}
HEADER_LENGTH = "Inference-Header-Content-Length"


def v2_request(data, header_length, max_values):
    """(JSON object, binary tensor data or None) of an infer body.

    Without ``header_length`` (the Inference-Header-Content-Length header) the
    whole body is the JSON request; with it, its first ``header_length`` bytes
    are and the rest is the inputs' binary data, in input order. The JSON is
    refused (413) above ``max_values`` commas before it is parsed (see
    :func:`service.inputs.read_json`)."""
    binary = None
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit()):
            raise ApiError(400, f"{HEADER_LENGTH} must be a non-negative integer, got "
                                f"{header_length!r}")
        size = int(text)
        if size > len(data):
            raise ApiError(400, f"{HEADER_LENGTH} is {size:,} but the body has only "
                                f"{len(data):,} bytes")
        data, binary = data[:size], data[size:]
    if not data.strip():
        raise ApiError(400, "the inference request is empty; expected a JSON object")
    if data.count(b",") > max_values:
        raise ApiError(413, f"the JSON request holds more than {max_values:,} values, more "
                            f"than a batch of CNN_MAX_IMAGES images of the model's input "
                            f"size; split the batch (or send binary tensor data)")
    try:
        body = json.loads(data)
    except RecursionError:
        raise ApiError(400, "the JSON request is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        what = "JSON header" if binary is not None else "request body"
        raise ApiError(400, f"the {what} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the inference request must be a JSON object")
    return body, binary


def v2_tensor(tensor, served, max_images, binary=None):
    """The model input of one $request_input: uint8 or float32 (N, C, H, W).

    ``binary``: the body's bytes after the JSON header (None when the request
    had no Inference-Header-Content-Length); an input with a
    ``binary_data_size`` parameter takes exactly those bytes."""
    if not isinstance(tensor, dict):
        raise ApiError(400, "each entry of 'inputs' must be an object")
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise ApiError(400, f"input tensor is missing {key!r}")
    if not isinstance(tensor["name"], str):
        raise ApiError(400, "input 'name' must be a string")
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise ApiError(400, "input 'parameters' must be an object")
    if any(key.startswith("shared_memory") for key in params):
        raise ApiError(400, "the shared memory extensions are not supported: send the "
                            "input as 'data' or as binary tensor data")
    datatype = tensor["datatype"]
    if datatype in _V2_REFUSED:
        raise ApiError(400, f"input datatype {datatype} is not accepted "
                            f"({_V2_REFUSED[datatype]}): send UINT8 (or any integer type) "
                            f"0-255, or FP32 (or any float type) 0-1")
    if datatype not in V2_DATATYPES:
        raise ApiError(400, f"input datatype must be one of {', '.join(V2_DATATYPES)}, got "
                            f"{datatype!r}")
    c, h, w = served.input_shape
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ApiError(400, f"input 'shape' must be a list of integers, got {shape!r}")
    allowed = f"[N, {c}, {h}, {w}]" + (f" or [N, {h}, {w}]" if c == 1 else
                                        f" (or channels-last [N, {h}, {w}, {c}])")
    channels_last = c > 1 and len(shape) == 4 and shape[1:] == [h, w, c] \
        and shape[1:] != [c, h, w]
    if not ((len(shape) == 4 and shape[1:] == [c, h, w]) or channels_last
            or (len(shape) == 3 and c == 1 and shape[1:] == [h, w])):
        raise ApiError(400, f"input shape must be {allowed}, got {shape}")
    if shape[0] < 0:
        raise ApiError(400, f"input shape must not be negative, got {shape}")
    check_count(shape[0], max_images)
    expected = shape[0] * c * h * w
    if "binary_data_size" in params:
        values = _binary_values(tensor, params["binary_data_size"], binary, shape, expected)
    elif "data" not in tensor:
        raise ApiError(400, "input tensor is missing 'data' (or a 'binary_data_size' "
                            "parameter for binary tensor data)")
    elif binary:
        raise ApiError(400, f"the body has {len(binary):,} bytes after the JSON header but "
                            f"the input declares no 'binary_data_size'")
    else:
        values = _flat_values(tensor["data"])
        if values.size != expected:
            raise ApiError(400, f"input shape {shape} holds {expected} values but 'data' "
                                f"has {values.size}")
    return _nchw(_pixels(values, datatype), shape, c, h, w, channels_last)


def _binary_values(tensor, size, binary, shape, expected):
    """The values of an input sent as binary tensor data, checked against the
    declared shape and the bytes the body carries."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ApiError(400, f"input 'binary_data_size' must be a non-negative integer, got "
                            f"{size!r}")
    if binary is None:
        raise ApiError(400, f"input 'binary_data_size' needs the {HEADER_LENGTH} header "
                            f"(the length of the JSON part of the body)")
    if "data" in tensor:
        raise ApiError(400, "input has both 'data' and 'binary_data_size': send one")
    datatype = tensor["datatype"]
    dtype = np.dtype({**V2_INTEGER_TYPES, **V2_FLOAT_TYPES}[datatype])
    need = expected * dtype.itemsize
    if size != need:
        raise ApiError(400, f"input 'binary_data_size' is {size:,} bytes but shape {shape} "
                            f"of {datatype} takes {need:,} ({expected:,} values x "
                            f"{dtype.itemsize} bytes)")
    if size != len(binary):
        raise ApiError(400, f"input 'binary_data_size' is {size:,} bytes but the body has "
                            f"{len(binary):,} bytes after the JSON header "
                            f"({HEADER_LENGTH})")
    values = np.frombuffer(binary, dtype)
    if datatype == "BF16":
        values = (values.astype("<u4") << 16).view("<f4")
    return values


def _pixels(values, datatype):
    """uint8 (integer datatypes, 0-255) or float32 (float datatypes, 0-1) of
    the flat ``values`` (JSON numbers as float64, or binary data in its own
    dtype), every value range-checked."""
    if datatype in V2_FLOAT_TYPES:
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ApiError(400, f"{datatype} data must be finite numbers in [0, 1] (use "
                                f"UINT8 for 0-255), found {float(values[i]):g} at flat "
                                f"index {i}")
        return values.astype(np.float32)
    if values.dtype.kind == "f":   # JSON numbers
        bad = ~np.isfinite(values) | (values < 0) | (values > 255) \
            | (values != np.round(values))
    else:
        bad = (values < 0) | (values > 255)
    if bad.any():
        i = int(np.argmax(bad))
        found = f"{values[i]:g}" if values.dtype.kind == "f" else str(values[i])
        raise ApiError(400, f"{datatype} data must be integers in [0, 255] (pixel values), "
                            f"found {found} at flat index {i}")
    return values.astype(np.uint8)


def _nchw(flat, shape, c, h, w, channels_last):
    if channels_last:
        return np.ascontiguousarray(flat.reshape(shape[0], h, w, c).transpose(0, 3, 1, 2))
    return flat.reshape(shape[0], c, h, w)


def _flat_values(data):
    """The numbers of flat or nested (rectangular) JSON ``data`` as float64 (n,)."""
    if not isinstance(data, list):
        raise ApiError(400, f"input 'data' must be a list, got {json_type(data)}")
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
                                f"{type_name(t)}")
    try:
        return obj.astype(np.float64).ravel()
    except OverflowError:
        raise ApiError(400, "input 'data' holds an integer too large to represent") from None
