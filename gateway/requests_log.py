"""Per-request metrics and one JSON log line per failed request."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

from digitflow.observability import LATENCY_BUCKETS, log_event

logger = logging.getLogger("gateway.requests")
REQUESTS = Counter("digitflow_http_requests", "HTTP requests by route and status", ["route", "status"])
REQUEST_SECONDS = Histogram("digitflow_http_request_seconds", "HTTP request time", ["route"], buckets=LATENCY_BUCKETS)


def register_request_metrics(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        REQUESTS.labels(route, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(route).observe(elapsed)
        if response.status_code >= 400:
            code = (response.get_json(silent=True) or {}).get("error", {}).get("code") if response.is_json else None
            log_event(
                logger,
                "request_rejected",
                logging.INFO if response.status_code < 500 else logging.ERROR,
                route=route,
                status=response.status_code,
                error_code=code,
                duration_ms=round(elapsed * 1000, 3),
            )
        return response
