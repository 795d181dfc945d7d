"""service.multipart's fast path gives werkzeug's answer, or none at all."""
import io
import itertools

from hypothesis import given, settings, strategies as st
from werkzeug.formparser import MultiPartParser

from service.multipart import simple_file_parts

BOUNDARY = "b0undary"
MAX_PARTS = 50


def werkzeug_parts(body, boundary=BOUNDARY, max_parts=MAX_PARTS):
    """(fields, [(name, filename, content type, data)]) as werkzeug parses the body."""
    fields, files = MultiPartParser(max_form_parts=max_parts, cls=list).parse(
        io.BytesIO(body), boundary.encode(), len(body))
    return fields, [(name, f.filename, f.content_type, f.read()) for name, f in files]


def canonical(parts, boundary=BOUNDARY, final_crlf=True):
    """A body as curl/requests send it: parts are (name, filename, ctype, data)."""
    out = []
    for name, filename, ctype, data in parts:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; ' \
               f'filename="{filename}"\r\n'
        if ctype is not None:
            head += f"Content-Type: {ctype}\r\n"
        out.append(head.encode("latin-1") + b"\r\n" + data + b"\r\n")
    return b"".join(out) + f"--{boundary}--".encode() + (b"\r\n" if final_crlf else b"")


def test_canonical_body_is_split_like_werkzeug():
    parts = [("file", "a.png", "image/png", b"\x89PNG\r\n\x1a\n..."),
             ("images", "b b.npy", "application/x-npy", b"\x93NUMPY\r\n\r\n"),
             ("file", "", None, b""),
             ("x", "c.png", None, b"\r\n--b0undar\r\n")]
    body = canonical(parts)
    got = simple_file_parts(body, BOUNDARY, MAX_PARTS)
    assert got == parts
    assert werkzeug_parts(body) == ([], parts)
    assert simple_file_parts(canonical(parts, final_crlf=False), BOUNDARY, MAX_PARTS) == parts


def test_unusual_bodies_are_left_to_werkzeug():
    good = canonical([("f", "a.png", "image/png", b"data")])
    declined = [
        b"preamble\r\n" + good,                                  # preamble
        good.replace(b"\r\n", b"\n"),                            # bare LF
        good.replace(b'filename="a.png"', b'filename="a\\".png"'),  # escaped quote
        good.replace(b'filename="a.png"', b'filename="a%22.png"'),  # percent escape
        good.replace(b'filename="a.png"', b"filename*=UTF-8''a.png"),  # RFC 2231
        good.replace(b'; filename="a.png"', b""),                # a field, no filename
        good.replace(b"Content-Type: image/png\r\n",
                     b"Content-Type: image/png\r\nX-Extra: 1\r\n"),  # other header
        good.replace(b"data", b"da\n--b0undary\nta"),            # boundary inside data
        good.replace(b"data", b"da\r\n--b0undary  \r\nta"),      # padded boundary
        good[:-10],                                              # truncated
        good + b"epilogue",                                      # epilogue
        canonical([("f", f"{i}.png", None, b"x") for i in range(MAX_PARTS + 1)]),
        "é".encode() + good,
    ]
    for body in declined:
        assert simple_file_parts(body, BOUNDARY, MAX_PARTS) is None, body[:80]
    assert simple_file_parts(good, None, MAX_PARTS) is None
    assert simple_file_parts(good, "other", MAX_PARTS) is None
    assert simple_file_parts(good, "bé", MAX_PARTS) is None


# mostly characters the fast path accepts, sometimes one that it must decline
_chars = st.sampled_from(list(" a.Z_-;=" * 6) + list('"\\%é\r\n\t'))
_text = st.lists(_chars, max_size=6).map("".join)
_data = st.lists(st.sampled_from([b"x", b"\r", b"\n", b"\r\n", b"--", b"--b0undary", b"b0undary",
                                  b"\r\n--b0undary", b"\r\n--b0undary\r\n", b"\x00", b" "]),
                 max_size=8).map(b"".join)
_part = st.tuples(_text, _text, st.none() | st.sampled_from(["image/png", " image/png",
                                                             "a; b=c", "x "]), _data)


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(_part, min_size=1, max_size=4), final_crlf=st.booleans(),
       cut=st.none() | st.none() | st.integers(0, 400))
def test_fast_path_agrees_with_werkzeug(parts, final_crlf, cut):
    body = canonical(parts, final_crlf=final_crlf)
    if cut is not None:
        body = body[:cut]
    fast = simple_file_parts(body, BOUNDARY, MAX_PARTS)
    if fast is None:
        return
    try:
        fields, files = werkzeug_parts(body)
    except ValueError as exc:  # werkzeug refuses it: the fast path must have too
        raise AssertionError(f"fast path accepted a body werkzeug refuses: {exc}") from exc
    assert fields == []
    assert fast == files


def test_fast_path_is_used_for_canonical_bodies():
    """Nearly every body that a curl-like client sends takes the fast path."""
    names = ["a.png", "IMG 0001.JPG", "x-y_z.npy", ""]
    for name, ctype in itertools.product(names, [None, "image/png"]):
        body = canonical([("file", name, ctype, b"\x89PNG\r\n"), ("file", "b", None, b"")])
        assert simple_file_parts(body, BOUNDARY, MAX_PARTS) is not None


def test_app_answers_the_same_for_fast_and_werkzeug_parsed_bodies(client):
    """Through /predict: a canonical body (fast path) and the same files in a body
    only werkzeug parses (preamble, bare LF line breaks) give the same answer."""
    from tests.service.helpers import png_bytes, random_images

    files = [("file", f"{i}.png", "image/png", png_bytes(a))
             for i, a in enumerate(random_images(3, seed=9))]
    canonical_body = canonical(files)
    assert simple_file_parts(canonical_body, BOUNDARY, MAX_PARTS) is not None
    other = b"a preamble\n" + b"".join(
        f'--{BOUNDARY}\nContent-Disposition: form-data; name="{n}"; filename="{f}"\n'
        f"Content-Type: {c}\n\n".encode() + d + b"\n" for n, f, c, d in files
    ) + f"--{BOUNDARY}--\n".encode()
    assert simple_file_parts(other, BOUNDARY, MAX_PARTS) is None
    answers = []
    for body in (canonical_body, other):
        r = client.post("/predict", data=body,
                        content_type=f"multipart/form-data; boundary={BOUNDARY}")
        assert r.status_code == 200, r.get_json()
        answers.append(r.get_json())
    assert answers[0] == answers[1]
    assert [p["name"] for p in answers[0]["predictions"]] == ["0.png", "1.png", "2.png"]


def test_too_many_parts_is_still_413(make_app, models_dir):
    client = make_app(models_dir, CNN_MAX_IMAGES=2).test_client()  # MAX_FORM_PARTS 68
    body = canonical([("file", f"{i}.png", None, b"x") for i in range(69)])
    r = client.post("/predict", data=body,
                    content_type=f"multipart/form-data; boundary={BOUNDARY}")
    assert r.status_code == 413 and "too many parts" in r.get_json()["error"]
