"""The REST gateway: accepts images, starts pipeline chains by task name, answers polls.

Run with ``python -m gateway.serve`` (waitress; any WSGI server runs ``gateway:create_app()``).
"""

from __future__ import annotations

from flask import Flask

from digitflow.settings import GatewaySettings


def create_app(settings: GatewaySettings | None = None) -> Flask:
    """Build the gateway; ``settings`` default to the environment (validated here)."""
    # Imported here, not at the top: ``python -m gateway.serve`` imports this package before
    # it empties the Prometheus multiprocess folder, and metrics created then would point at
    # deleted files.
    from digitflow.observability import setup_logging

    if settings is None:
        # The real service: settings and logging come from the environment.
        settings = GatewaySettings.from_env()
        setup_logging("gateway", settings.log_level, settings.log_format)
    from gateway import health, jobs_api, models_api, monitoring_api, openapi, web
    from gateway.errors import register_error_handlers
    from gateway.requests_log import register_request_metrics
    from gateway.services import GatewayServices
    from gateway.tracing import register_tracing

    app = Flask(__name__)
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
    register_tracing(app)  # spans only while OTEL_EXPORTER_OTLP_ENDPOINT is set
    return app
