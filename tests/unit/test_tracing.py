"""Tracing while off costs nothing (no OpenTelemetry import), and the trace context a batch item
carries is validated like every other field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from digitflow.errors import InvalidMessageError
from digitflow.messages import check_item

OFF_PROBE = """
import sys
import redis  # redis-py imports parts of OpenTelemetry itself when installed (its own metrics)
def otel(): return {name for name in sys.modules if name.startswith("opentelemetry")}
before = otel()
from digitflow import stage, tracing
from gateway import create_app
from digitflow.settings import GatewaySettings
create_app(GatewaySettings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
assert tracing.tracer() is None and tracing.start_batch("preprocess", "b", [{"job_id": "j", "model": "m"}]) is None
print(sorted(otel() - before))
"""


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    """Beyond what redis-py imports anyway: no tracing SDK, exporter or propagator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    found = subprocess.run([sys.executable, "-c", OFF_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-3000:]
    assert found.stdout.strip() == "[]"


def test_tracing_is_on_only_with_a_collector_and_not_disabled() -> None:
    from digitflow.tracing import enabled

    assert not enabled({})
    assert enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"})
    assert enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "true"})


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    ],
)
def test_a_w3c_traceparent_is_accepted(traceparent: str) -> None:
    item = check_item({"job_id": "j", "model": "digits", "traceparent": traceparent}, ())
    assert item["traceparent"] == traceparent


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # the invalid trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # the invalid span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        17,
    ],
)
def test_a_malformed_traceparent_fails_its_job(traceparent: object) -> None:
    with pytest.raises(InvalidMessageError, match="traceparent") as caught:
        check_item({"job_id": "j", "model": "digits", "traceparent": traceparent}, ())
    assert caught.value.details["job_id"] == "j"


def test_a_callers_traceparent_header_is_continued_by_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP header names are case-insensitive: Werkzeug's "Traceparent" is the caller's trace."""
    from flask import g
    from opentelemetry.sdk.trace import TracerProvider

    from digitflow import tracing
    from digitflow.settings import GatewaySettings
    from gateway import create_app

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    provider = TracerProvider()  # no exporter: nothing leaves the process
    monkeypatch.setitem(tracing._state, "pid", os.getpid())
    monkeypatch.setitem(tracing._state, "tracer", provider.get_tracer("test"))
    app = create_app(GatewaySettings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    seen: dict[str, str] = {}

    @app.get("/trace-probe")
    def probe() -> str:
        context = g.otel_span.get_span_context()
        seen["trace"] = format(context.trace_id, "032x")
        return "ok"

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    answer = app.test_client().get("/trace-probe", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert answer.status_code == 200 and seen["trace"] == trace_id
