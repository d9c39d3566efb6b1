"""The REST gateway: accepts images, starts pipeline chains by task name, answers polls.

Run with ``gunicorn -c gateway/gunicorn_conf.py 'gateway:create_app()'``.
"""

from __future__ import annotations

import io
from typing import IO, Any

from flask import Flask, Request

from digitflow.observability import setup_logging
from digitflow.settings import GatewaySettings


class GatewayRequest(Request):
    """Uploads are held in memory (they are bounded by MAX_UPLOAD_MB and read whole anyway):
    no temporary files, and none leaked when a client sends a truncated multipart body."""

    def _get_file_stream(self, *args: Any, **kwargs: Any) -> IO[bytes]:
        return io.BytesIO()


def create_app(settings: GatewaySettings | None = None) -> Flask:
    """Build the gateway; ``settings`` default to the environment (validated here)."""
    if settings is None:
        # The real service: settings and logging come from the environment.
        settings = GatewaySettings.from_env()
        setup_logging("gateway", settings.log_level, settings.log_format)
    from gateway import health, jobs_api, models_api, monitoring_api, openapi, web
    from gateway.errors import register_error_handlers
    from gateway.requests_log import register_request_metrics
    from gateway.services import GatewayServices

    app = Flask(__name__)
    app.request_class = GatewayRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["digitflow"] = GatewayServices(settings)
    app.register_blueprint(jobs_api.bp)
    app.register_blueprint(models_api.bp)
    app.register_blueprint(monitoring_api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(web.bp)
    register_error_handlers(app)
    register_request_metrics(app)
    return app
