"""GET /: a small page to try the model in a browser (no external resources).

The heading and the class list are the served model's (the default one, and
whichever the model menu selects). Upload or drop image files, or, for a
grayscale model, draw on a 280x280 canvas (white strokes on black, like
Fashion-MNIST; the server downscales it as any image); the page posts them to
/predict with fetch and shows the top classes. Scripts run under
a Content-Security-Policy with a per-response nonce; results are inserted as
text, never as HTML.
"""
import secrets

from flask import Blueprint, current_app, render_template, url_for

bp = Blueprint("web", __name__, template_folder="templates")


@bp.get("/")
def index():
    nonce = secrets.token_urlsafe(16)
    registry = current_app.extensions["cnn"].registry
    default = registry.models.get(registry.default_name) if registry.default_name else None
    html = render_template("index.html", nonce=nonce, predict_url=url_for("api.predict"),
                           models_url=url_for("api.models"), model=default)
    csp = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
           f"img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; "
           f"base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return html, 200, {"Content-Type": "text/html; charset=utf-8",
                       "Content-Security-Policy": csp}
