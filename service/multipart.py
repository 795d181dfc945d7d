"""A fast path for the multipart/form-data bodies that clients actually send.

Werkzeug's multipart parser is general (any line breaks, header
continuations, RFC 2231 names, streaming to temporary files) and costs about
50 us of Python per part: for a batch of 64 small PNGs that is as much as
decoding them. :func:`simple_file_parts` splits the common, canonical shape
of body at C speed instead:

    --BOUNDARY\\r\\n
    Content-Disposition: form-data; name="NAME"; filename="FILENAME"\\r\\n
    [Content-Type: TYPE\\r\\n]
    \\r\\n
    DATA\\r\\n
    --BOUNDARY\\r\\n
    ...
    DATA\\r\\n
    --BOUNDARY--[\\r\\n]

(what curl -F, requests/urllib3, browsers and werkzeug's test client send).
It returns None for anything else, and the caller then uses werkzeug's parser,
so every unusual body (a preamble, bare LF line breaks, other or reordered
part headers, quotes, backslashes, percent signs or non-ASCII characters in
names, fields without a filename, the boundary string inside a part, more
parts than MAX_FORM_PARTS, a truncated body, ...) is handled, and refused,
exactly as before. For the bodies it accepts, the result is the one werkzeug
gives: the same parts, in body order, with the same file names, content types
and bytes (tests/service/test_multipart.py checks this differentially).
"""
import re

# Printable ASCII without '"', '\\' and '%' (which werkzeug would unescape).
_VALUE = rb'[ !#$&-\[\]-~]*'
_PART_HEAD = re.compile(
    rb'(?i:content-disposition): form-data; name="(' + _VALUE + rb')"; filename="('
    + _VALUE + rb')"\r\n'
    rb'(?:(?i:content-type): ([!-~](?:[ -~]*[!-~])?)\r\n)?'
    rb'\r\n')


def simple_file_parts(body, boundary, max_parts):
    """[(field name, filename, content type or None, data)] of a canonical
    multipart body of file parts (see the module docstring), else None.

    ``body`` is the whole request body (bytes), ``boundary`` the boundary
    parameter of its Content-Type (str or None)."""
    if not boundary or not isinstance(body, bytes):
        return None
    try:
        delim = b"--" + boundary.encode("ascii")
    except UnicodeEncodeError:
        return None
    if not body.startswith(delim + b"\r\n"):
        return None
    closing = b"\r\n" + delim + b"--"
    if body.endswith(closing):
        end = len(body) - len(closing)
    elif body.endswith(closing + b"\r\n"):
        end = len(body) - len(closing) - 2
    else:
        return None
    start = len(delim) + 2
    if end < start:
        return None
    content = body[start:end]
    raw_parts = content.split(b"\r\n" + delim + b"\r\n")
    # The delimiter must occur nowhere else: werkzeug also ends a part at a
    # boundary after a bare CR or LF, or followed by spaces.
    if content.count(delim) != len(raw_parts) - 1 or len(raw_parts) > max_parts:
        return None
    parts = []
    for raw in raw_parts:
        m = _PART_HEAD.match(raw)
        if m is None:
            return None
        name, filename, ctype = m.groups()
        parts.append((name.decode("ascii"), filename.decode("ascii"),
                      None if ctype is None else ctype.decode("ascii"), raw[m.end():]))
    return parts
