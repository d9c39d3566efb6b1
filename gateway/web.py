"""The web pages: ``/`` (draw or upload a digit and watch its job go through the pipeline),
``/models`` (the registry: versions, aliases, promotion and rollback for admins) and
``/monitoring`` (accuracy, drift, outliers and class mix over time, alerts, retraining).

The pages are plain HTML/JS/CSS under ``gateway/static`` (no build step, nothing fetched from the
internet); they talk to the same public API as any client. Each page extends ``layout.html``
(header and footer) and is rendered per request only to fill in the operator-configured links
(Flower, metrics) and cache-busting asset URLs.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, url_for
from flask.blueprints import BlueprintSetupState
from jinja2 import Environment, FileSystemLoader

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_FLOWER_URL = "http://127.0.0.1:5555"
ENV_KEY = "digitflow.web.templates"
# The page only loads its own files and talks to this origin; say so to the browser.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Pages in the header, in order: (endpoint, label).
NAV = (("web.index", "Recognise"), ("web.models", "Models"), ("web.monitoring", "Monitoring"))

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
    # The app's Jinja settings (autoescaping included), loading the pages from the static folder.
    templates: Environment = state.app.jinja_env.overlay(loader=FileSystemLoader(STATIC_DIR))
    state.app.extensions[ENV_KEY] = templates


def _asset(filename: str) -> str:
    # The file's mtime busts browser caches after a deploy without a build step.
    version = int((STATIC_DIR / filename).stat().st_mtime)
    return url_for("web.static", filename=filename, v=version)


def _page(template: str, endpoint: str) -> Response:
    html = (
        current_app.extensions[ENV_KEY]
        .get_template(template)
        .render(
            flower_url=flower_url_of(current_app.config.get("FLOWER_URL")),
            metrics_url=url_for("health.metrics"),
            nav=[(url_for(e), label, e == endpoint) for e, label in NAV],
            asset=_asset,
        )
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/")
def index() -> Response:
    """Draw or upload a digit; follow its job."""
    return _page("index.html", "web.index")


@bp.get("/models")
def models() -> Response:
    """The registry: every model's versions and aliases; promote / roll back with the admin token."""
    return _page("models.html", "web.models")


@bp.get("/monitoring")
def monitoring() -> Response:
    """Charts of each model's accuracy, drift, outliers and class mix over time."""
    return _page("monitoring.html", "web.monitoring")
