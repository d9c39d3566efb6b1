"""OpenTelemetry tracing: one trace per job, from the gateway's HTTP request through every stage.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) names a
collector; then spans go there over OTLP/HTTP (protobuf), configured by the standard OTel
variables (``OTEL_SERVICE_NAME``, ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_SDK_DISABLED``, ...).
While off, nothing of OpenTelemetry is imported and each hook costs two environment look-ups
(about 1 us, once per request or batch).

The job's context travels with the job: the gateway stamps each batch item with a W3C
``traceparent`` (digitflow/messages.py), and every stage replaces it with the one of its own
span for that job. A stage runs a batch of jobs from many traces, so it records:

* one ``<stage> batch`` span, in a trace of its own, linked to each job's span (each link names
  its job) and carrying the job ids. A span keeps at most ``OTEL_SPAN_LINK_COUNT_LIMIT`` links,
  128 by default; a batch holds up to ``messages.MAX_ITEMS`` (1024) jobs, so the limit is
  raised to that unless the variable is set;
* one ``<stage>`` span per job, in the job's trace (child of the previous hop), spanning the
  batch's run, linked back to the batch span, with the job id and any error code.

Spans are exported by a BatchSpanProcessor per process, created lazily in the process that
records (after a prefork pool or gunicorn forks). A Celery pool child leaves with ``os._exit``,
which skips atexit, so the worker runtime calls :func:`flush` on ``worker_process_shutdown``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from digitflow.messages import MAX_ITEMS, Item

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_state: dict[str, Any] = {"service": "digitflow", "pid": None, "provider": None, "tracer": None}


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Tracing is on when a collector is named and the SDK is not disabled."""
    if not (env.get(ENDPOINT_VARS[0]) or env.get(ENDPOINT_VARS[1])):
        return False  # the usual case first: about 1 us per call
    return env.get("OTEL_SDK_DISABLED", "").lower() != "true" and env.get("OTEL_TRACES_EXPORTER", "") != "none"


def configure(service: str) -> None:
    """Name this process's service (``service.name``, unless OTEL_SERVICE_NAME says otherwise)."""
    _state["service"] = service


def tracer() -> Tracer | None:
    """This process's tracer, or None while tracing is off. Created on first use in each process."""
    if not enabled():
        return None
    if _state["pid"] != os.getpid():
        _start_provider()
    return _state["tracer"]


def _start_provider() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": _state["service"]}
    links = None if os.environ.get("OTEL_SPAN_LINK_COUNT_LIMIT") else MAX_ITEMS
    # The parent's provider (if it forked after creating one) is not touched: its exporter
    # thread did not survive the fork, and shutting it down here would flush the parent's
    # copy of its queue a second time.
    provider = TracerProvider(resource=Resource.create(attributes), span_limits=SpanLimits(max_links=links))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _state.update(pid=os.getpid(), provider=provider, tracer=provider.get_tracer("digitflow"))


def flush(timeout_ms: int = 5000) -> None:
    """Export what this process recorded and stop its exporter (a process about to exit)."""
    provider: TracerProvider | None = _state["provider"]
    if provider is not None and _state["pid"] == os.getpid():
        provider.force_flush(timeout_ms)
        provider.shutdown()
        _state.update(pid=None, provider=None, tracer=None)


def context_of(traceparent: str | None) -> Context | None:
    """The remote parent a W3C ``traceparent`` names (None for none or a malformed one)."""
    if not traceparent:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def traceparent_of(span: Span) -> str:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier["traceparent"]


class BatchTrace:
    """The spans of one stage batch: start it before the step runs, :meth:`end` after."""

    def __init__(self, tracer: Tracer, stage: str, batch_id: str, items: Iterable[Item]) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context

        self._tracer, self.stage, self.batch_id = tracer, stage, batch_id
        self._parents = {item["job_id"]: context_of(item.get("traceparent")) for item in items}
        links = [
            trace.Link(trace.get_current_span(ctx).get_span_context(), {"digitflow.job_id": job_id})
            for job_id, ctx in self._parents.items()
            if ctx is not None
        ]
        self.started_ns = time.time_ns()
        self.span = tracer.start_span(
            f"{stage} batch",
            context=Context(),  # a root: the batch belongs to no one job's trace
            links=links,
            start_time=self.started_ns,
            attributes={
                "digitflow.stage": stage,
                "digitflow.batch_id": batch_id,
                "digitflow.batch_size": len(self._parents),
                "digitflow.job_ids": list(self._parents),
            },
        )

    def end(self, failed: Mapping[str, str]) -> dict[str, str]:
        """Record each job's span (``failed``: job id -> error code); returns job id -> the
        traceparent the next stage continues from."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        ended_ns = time.time_ns()
        batch_link = [trace.Link(self.span.get_span_context(), {"digitflow.batch_id": self.batch_id})]
        forward: dict[str, str] = {}
        for job_id, parent in self._parents.items():
            span = self._tracer.start_span(
                self.stage,
                context=parent,
                links=batch_link,
                start_time=self.started_ns,
                attributes={
                    "digitflow.stage": self.stage,
                    "digitflow.job_id": job_id,
                    "digitflow.batch_id": self.batch_id,
                },
            )
            code = failed.get(job_id)
            if code is not None:
                span.set_attribute("digitflow.error_code", code)
                span.set_status(Status(StatusCode.ERROR, code))
            span.end(end_time=ended_ns)
            forward[job_id] = traceparent_of(span)
        self.span.set_attribute("digitflow.failed", len(failed))
        self.span.end(end_time=ended_ns)
        return forward


def start_batch(stage: str, batch_id: str, items: Iterable[Item]) -> BatchTrace | None:
    """A :class:`BatchTrace` for the jobs of ``items``, or None while tracing is off."""
    found = tracer()
    return None if found is None else BatchTrace(found, stage, batch_id, items)
