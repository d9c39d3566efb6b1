"""The gateway's part of a job's trace (digitflow/tracing.py): a server span per HTTP request and,
under it, one ``submit job`` span per job, whose W3C ``traceparent`` the job's batch item
carries to the preprocess stage.

Written here rather than with opentelemetry-instrumentation-flask: one span per request is all
that is needed, and that package (0.x, pinned to one API release) would have to be imported and
wired even while tracing is off. Health checks and metrics scrapes are not traced.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, request

from digitflow import tracing
from digitflow.messages import Item

UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def register_tracing(app: Flask) -> None:
    """Trace this app's requests when tracing is on (otherwise this adds nothing)."""
    if not tracing.enabled():
        return
    tracing.configure("gateway")
    app.before_request(_start)
    app.after_request(_status)
    app.teardown_request(_end)


def _start() -> None:
    tracer = tracing.tracer()
    if tracer is None or request.path in UNTRACED or request.path.startswith("/static/"):
        return
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # A caller's own trace. The propagator looks up "traceparent" as written; HTTP header names are
    # case-insensitive, and Werkzeug hands them over capitalized ("Traceparent").
    parent = TraceContextTextMapPropagator().extract({k.lower(): v for k, v in request.headers.items()})
    route = request.url_rule.rule if request.url_rule is not None else request.path
    span = tracer.start_span(
        f"{request.method} {route}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
    )
    g.otel_span = span
    g.otel_token = context.attach(trace.set_span_in_context(span, parent))


def _status(response: Response) -> Response:
    span = g.get("otel_span")
    if span is not None:
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
    return response


def _end(exc: BaseException | None) -> None:
    span = g.pop("otel_span", None)
    if span is None:
        return
    from opentelemetry import context

    if exc is not None:
        span.record_exception(exc)
    context.detach(g.pop("otel_token"))
    span.end()


def stamp_items(items: list[Item]) -> None:
    """Give each new job a span in the current request's trace and its ``traceparent``."""
    span: Any = g.get("otel_span") if items else None
    tracer = tracing.tracer() if span is not None else None
    if tracer is None:
        return
    job_ids = [item["job_id"] for item in items]
    span.set_attribute("digitflow.job_ids", job_ids)
    if len(items) == 1:
        span.set_attribute("digitflow.job_id", job_ids[0])
    for item in items:
        job = tracer.start_span(
            "submit job", attributes={"digitflow.job_id": item["job_id"], "digitflow.model": item["model"]}
        )
        item["traceparent"] = tracing.traceparent_of(job)
        job.end()
