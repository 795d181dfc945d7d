"""GET /: a small page to try the served models in a browser (no external resources).

The heading, class list and input ("28x28 grayscale", "32x32 colour") are the
served model's: the default one, and whichever the model menu selects. The
menu and every model's facts are rendered into the page (the facts as JSON
through ``tojson``), so the page is right without a second request and the
menu needs no script to fill it. Upload or drop image files (posted to
/predict), or, for a grayscale model only, draw on a 280x280 canvas (white
strokes on black, like Fashion-MNIST; the server downscales it as any image);
the page shows the top classes as bars sized by probability. It posts with
``?partial=true``, so one unreadable file does not cost the others: it gets
a card of its own with the server's reason, in upload order. The top-k input
is bounded by the selected model's class count (1..K), as the server's
``top_k`` check is. Model and class names come from weights files,
so they are never trusted as markup: Jinja autoescapes them in HTML, ``tojson``
escapes ``<``, ``>``, ``&`` and ``'`` inside the script, and the script inserts
text with ``textContent`` only. Scripts run under a Content-Security-Policy with
a per-response nonce.
"""
import secrets

from flask import Blueprint, current_app, render_template, url_for

bp = Blueprint("web", __name__, template_folder="templates")


def describe_input(input_shape):
    """What a model takes, in words: "28x28 grayscale", "32x32 colour" (H x W, as
    ``--image-size``), or "16x16, 2 channels"."""
    c, h, w = input_shape
    if c in (1, 3):
        return f"{h}x{w} {'grayscale' if c == 1 else 'colour'}"
    return f"{h}x{w}, {c} channels"


def page_facts(served):
    """The facts the page shows about one model (also what the menu switches to)."""
    accuracy = served.summary.get("test_accuracy")
    label = served.name
    if isinstance(accuracy, (int, float)):
        label += f" (test acc {100 * accuracy:.1f}%)"
    return {"name": served.name, "label": label, "classes": served.class_names,
            "input": describe_input(served.input_shape),
            "drawable": served.input_shape[0] == 1}


@bp.get("/")
def index():
    nonce = secrets.token_urlsafe(16)
    registry = current_app.extensions["cnn"].registry
    models = {name: page_facts(served) for name, served in registry.models.items()}
    default = models.get(registry.default_name)
    if not models:
        problem = "No model is loaded on the server."
    elif default is None:   # CNN_DEFAULT_MODEL did not load: say so, offer the others
        problem = f"Choose a model: {registry.not_ready_reason()}."
    else:
        problem = None
    html = render_template("index.html", nonce=nonce, predict_url=url_for("api.predict"),
                           models_url=url_for("api.models"), models=models, model=default,
                           problem=problem)
    csp = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
           f"img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; "
           f"base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return html, 200, {"Content-Type": "text/html; charset=utf-8",
                       "Content-Security-Policy": csp}
