"""The page (GET /) shows the served model as it is, and the metadata endpoints
report a colour model's real input.

Model and class names come from weights files, so the escaping test plants
markup in both and checks the parsed page: one script element, no injected
element, the names shown as text and read back intact from the script's JSON.
The menu-switching test runs the page's own script under Node (skipped without
``node``) against a stub document.
"""
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from cnn.io import save_model
from service.web import describe_input
from tests.service.conftest import build_tiny
from tests.service.helpers import save_colour_model

HOSTILE_CLASS = "</script><script>alert(1)</script>"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"   # a file name may hold this


class Page(HTMLParser):
    """The start tags of a page and the text of each element that has an id."""

    def __init__(self, html):
        super().__init__()
        self.tags, self.text, self.attrs, self._open = [], {}, {}, []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.attrs[attrs["id"]] = attrs
            self.text[attrs["id"]] = ""
        if tag not in ("input", "meta", "link"):
            self._open.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        for element_id in self._open:
            if element_id:
                self.text[element_id] += data


def page_of(client):
    r = client.get("/")
    assert r.status_code == 200
    return r.get_data(as_text=True)


def page_models(html):
    """The models the page's script knows (its MODELS JSON)."""
    return json.loads(re.search(r"var MODELS = (.*);\n", html).group(1))


@pytest.fixture
def colour_dir(tmp_path):
    folder = tmp_path / "colour"
    save_colour_model(folder, "pets", (16, 16), ["cat", "dog", "bird"])
    return folder


def test_describe_input():
    assert describe_input((1, 28, 28)) == "28x28 grayscale"
    assert describe_input((3, 32, 24)) == "32x24 colour"       # H x W, as --image-size
    assert describe_input((2, 8, 8)) == "8x8, 2 channels"


def test_grayscale_model_page_offers_the_canvas(client):
    page = Page(page_of(client))
    assert page.text["title"] == "tiny classifier"
    assert page.text["input"] == "Input: 28x28 grayscale images"
    assert page.text["classes"].startswith("Classes: T-shirt/top, Trouser, Pullover,")
    assert "hidden" not in page.attrs["draw-panel"] and "canvas" in page.tags
    assert page.text["draw-hint"] == ", or draw one,"
    assert (page.attrs["topk"]["min"], page.attrs["topk"]["max"]) == ("1", "10")


def test_colour_model_page_offers_upload_only(make_app, colour_dir):
    html = page_of(make_app(colour_dir).test_client())
    page = Page(html)
    assert page.text["title"] == "pets classifier"
    assert page.text["input"] == "Input: 16x16 colour images"
    assert page.text["classes"] == "Classes: cat, dog, bird"
    assert "hidden" in page.attrs["draw-panel"] and page.text["draw-hint"] == ""
    assert (page.attrs["topk"]["max"], page.attrs["topk"]["value"]) == ("3", "3")  # 3 classes
    assert page.attrs["upload-form"]["action"] == "/predict" and "grayscale" not in html
    assert "Fashion-MNIST" not in html and "Trouser" not in html


def test_menu_lists_every_model_and_selects_the_default(make_app, colour_dir):
    save_model(colour_dir / "gray.npz", build_tiny())
    html = page_of(make_app(colour_dir, CNN_DEFAULT_MODEL="pets").test_client())
    options = re.findall(r'<option value="([^"]*)"( selected)?>', html)
    assert options == [("gray", ""), ("pets", " selected")]
    assert [(m["name"], m["input"], m["drawable"]) for m in page_models(html)] == [
        ("gray", "28x28 grayscale", True), ("pets", "16x16 colour", False)]


def test_a_default_that_did_not_load_is_named(make_app, colour_dir):
    (colour_dir / "broken.npz").write_bytes(b"not a weights file")
    html = page_of(make_app(colour_dir, CNN_DEFAULT_MODEL="broken").test_client())
    page = Page(html)
    assert page.text["classes"].startswith("Choose a model: CNN_DEFAULT_MODEL model "
                                           "'broken' failed to load: broken.npz:")
    assert '<option value="" selected>(choose a model)</option>' in html
    assert "hidden" in page.attrs["draw-panel"] and "hidden" in page.attrs["input"]


def test_names_from_a_weights_file_are_escaped(make_app, tmp_path):
    folder = tmp_path / "hostile"
    save_colour_model(folder, HOSTILE_NAME, (8, 8), ["cat", HOSTILE_CLASS])
    html = page_of(make_app(folder).test_client())
    page = Page(html)
    assert page.tags.count("script") == 1 and "img" not in page.tags   # nothing injected
    assert HOSTILE_CLASS not in html and HOSTILE_NAME not in html
    assert page.text["classes"] == f"Classes: cat, {HOSTILE_CLASS}"   # shown as text
    assert page.text["title"] == f"{HOSTILE_NAME} classifier"
    script = html.split("<script", 1)[1]
    assert "\\u003c/script\\u003e" in script          # tojson: cannot close the script
    (model,) = page_models(html)
    assert model["name"] == HOSTILE_NAME and model["classes"] == ["cat", HOSTILE_CLASS]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_picking_a_model_updates_the_page(make_app, colour_dir, tmp_path):
    save_model(colour_dir / "gray.npz", build_tiny())
    html = page_of(make_app(colour_dir, CNN_DEFAULT_MODEL="pets").test_client())
    script = re.search(r"<script nonce=\"[^\"]+\">(.*?)</script>", html, re.S).group(1)
    # a stub DOM: every element records handlers and takes any property
    harness = """
    const els = {};
    const stub = () => new Proxy(function () {}, {get: (o, k) => k in o ? o[k] : stub(),
                                                   set: (o, k, v) => (o[k] = v, true),
                                                   apply: () => stub()});
    function element() {
      const e = stub(); e.handlers = {};
      e.addEventListener = (t, f) => { e.handlers[t] = f; };
      return e;
    }
    global.document = {getElementById: id => els[id] || (els[id] = element()),
                       createElement: element};
    document.getElementById("topk").value = "8";
    eval(require("fs").readFileSync(0, "utf8"));
    const seen = {};
    for (const name of ["gray", "pets"]) {
      els.model.value = name; els.model.handlers.change();
      seen[name] = [els.title.textContent, document.title, els.input.textContent,
                    els.classes.textContent, els["draw-panel"].hidden,
                    els["draw-hint"].textContent, els.topk.max, els.topk.value];
    }
    console.log(JSON.stringify(seen));
    """
    out = subprocess.run(["node", "-e", harness], input=script, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    seen = json.loads(out)
    assert seen["gray"][:3] == ["gray classifier", "cnn: gray classifier",
                                "Input: 28x28 grayscale images"]
    assert seen["gray"][3].startswith("Classes: T-shirt/top, Trouser,")
    assert seen["gray"][4:] == [False, ", or draw one,", "10", "8"]
    # top-k is bounded by the model's 3 classes: 8 becomes 3
    assert seen["pets"] == ["pets classifier", "cnn: pets classifier",
                            "Input: 16x16 colour images", "Classes: cat, dog, bird", True, "",
                            "3", "3"]


def test_colour_model_metadata(make_app, colour_dir):
    client = make_app(colour_dir).test_client()
    (listed,) = client.get("/models").get_json()["models"]
    detail = client.get("/models/pets").get_json()
    for d in (listed, detail):
        assert d["input_shape"] == [3, 16, 16] and d["classes"] == ["cat", "dog", "bird"]
    meta = client.get("/v2/models/pets").get_json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"][0]["shape"] == [-1, 3]
    assert client.get("/v2/models/pets/ready").get_json() == {"name": "pets", "ready": True}
