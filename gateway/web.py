"""The web page at ``/``: draw or upload a digit and watch its job go through the pipeline.

The page is plain HTML/JS/CSS under ``gateway/static`` (no build step, nothing fetched from the
internet); it talks to the same public API as any client. ``index.html`` is rendered once per
request only to fill the operator-configured links (Flower, metrics) into data attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, render_template_string, url_for
from flask.blueprints import BlueprintSetupState

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_FLOWER_URL = "http://127.0.0.1:5555"

# A distinct URL prefix: Flask(__name__) already owns /static for the app itself.
bp = Blueprint("web", __name__, static_folder="static", static_url_path="/ui")


def flower_url_of(raw: str | None) -> str:
    """``FLOWER_URL`` if it is an http(s) URL; otherwise the local default (a link, never script)."""
    if raw and urlsplit(raw).scheme in {"http", "https"}:
        return raw
    return DEFAULT_FLOWER_URL


@bp.record_once
def _configure(state: BlueprintSetupState) -> None:
    # Read when the app is built, not at import; an app (or a test) may set FLOWER_URL itself.
    state.app.config.setdefault("FLOWER_URL", os.environ.get("FLOWER_URL"))


def _asset(filename: str) -> str:
    # The file's mtime busts browser caches after a deploy without a build step.
    version = int((STATIC_DIR / filename).stat().st_mtime)
    return url_for("web.static", filename=filename, v=version)


@bp.get("/")
def index() -> Response:
    """The single-page UI."""
    html = render_template_string(
        (STATIC_DIR / "index.html").read_text(encoding="utf-8"),
        flower_url=flower_url_of(current_app.config.get("FLOWER_URL")),
        metrics_url=url_for("health.metrics"),
        asset=_asset,
    )
    response = Response(html, mimetype="text/html")
    # The page only loads its own files and talks to this origin; say so to the browser.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
