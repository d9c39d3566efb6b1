"""One job's trace across the gateway and the three stages, received by a real OTLP/HTTP endpoint.

The receiver is a plain HTTP server on 127.0.0.1 that accepts ``POST /v1/traces`` and decodes
the protobuf body with opentelemetry-proto's ExportTraceServiceRequest, as a collector does.
The stack is the one ``make run`` starts, pointed at it with OTEL_EXPORTER_OTLP_ENDPOINT.

The workers' span processors are told to export only every 10 minutes: their spans can only
arrive because each pool child flushes them when it shuts down (worker_process_shutdown).
The gateway exports every 100 ms.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from digitflow_cli.supervisor import StackConfig, Supervisor, build_specs, free_port
from tests.conftest import RedisServer, wait_until
from tests.integration.models_support import wait_for_registry
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.stacks import Stack

pytestmark = pytest.mark.slow
PIPELINE = ("preprocess", "inference", "postprocess")


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]]  # (trace id, span id, attributes)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attrs(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class Receiver(ThreadingHTTPServer):
    """Collects every span posted to ``/v1/traces``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def received(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            service = str(_attrs(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    links = [(ln.trace_id.hex(), ln.span_id.hex(), _attrs(ln.attributes)) for ln in s.links]
                    found.append(
                        Span(
                            service,
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            _attrs(s.attributes),
                            links,
                        )
                    )
        with self.lock:
            self.spans += found


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        self.server.add(body)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def traced_stack(redis_url: str, var_dir: Path, endpoint: str) -> Stack:
    """The ``make run`` stack with tracing on; the gateway exports at once, workers only on flush."""
    config = StackConfig(
        var_dir=var_dir,
        redis_url=redis_url,
        gateway_port=free_port(),
        metrics_ports=(free_port(), free_port(), free_port()),
        workers={"preprocess": 1, "inference": 1, "postprocess": 1},
        flower=False,
        env={
            "HEARTBEAT_INTERVAL_S": "0.5",
            "HEARTBEAT_TTL_S": "3",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        },
    )
    specs = build_specs(config)
    for spec in specs:
        if spec.name == "gateway":
            spec.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    stack = Stack(Supervisor(specs, var_dir / "log"), f"http://127.0.0.1:{config.gateway_port}", config)
    stack.supervisor.start_all()
    try:
        stack.wait_ready()
        wait_for_registry(stack, ("digits",), servers=1)
    except AssertionError:
        stack.close()
        raise
    return stack


def test_one_job_is_one_trace_across_the_four_services(
    redis_server: RedisServer, tmp_path: Path, receiver: Receiver
) -> None:
    url = redis_server.url(13)
    redis.Redis.from_url(url).flushdb()
    stack = traced_stack(url, tmp_path, receiver.endpoint)
    try:
        (digit, _label), *_ = heldout_digits(1)
        answer = stack.submit(paper_photo(digit), "image/jpeg", wait=30)
        assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
        job_id = answer.json()["job_id"]

        def submitted() -> list[Span]:
            return [
                s for s in receiver.received() if s.name == "submit job" and s.attributes["digitflow.job_id"] == job_id
            ]

        wait_until(lambda: submitted(), timeout_s=20, what="the gateway's spans")
        assert not {s.service for s in receiver.received()} & set(PIPELINE), "workers exported before their flush"
        for stage in PIPELINE:  # warm shutdown: each pool child flushes its spans as it exits
            stack.supervisor.stop(stage)
        wait_until(
            lambda: {s.service for s in receiver.received()} >= {"gateway", *PIPELINE},
            timeout_s=20,
            what="the stages' spans after shutdown",
        )
    finally:
        stack.close()
        redis.Redis.from_url(url).flushdb()

    spans = receiver.received()
    (job_span,) = submitted()
    trace = [s for s in spans if s.trace_id == job_span.trace_id]
    assert {s.service for s in trace} == {"gateway", *PIPELINE}
    (request,) = [s for s in trace if s.name == "POST /v1/jobs"]
    assert request.service == "gateway" and job_span.parent_id == request.span_id
    assert request.attributes["http.response.status_code"] == 200

    # Each stage's span for this job is in its trace, a child of the previous hop.
    parent = job_span
    for stage in PIPELINE:
        (hop,) = [s for s in trace if s.service == stage and s.name == stage]
        assert hop.attributes["digitflow.job_id"] == job_id and hop.parent_id == parent.span_id
        assert "digitflow.error_code" not in hop.attributes
        # ... and the batch span it ran in, in a trace of its own, links to it and names the job.
        (batch,) = [s for s in spans if s.service == stage and s.name == f"{stage} batch"]
        assert batch.trace_id != job_span.trace_id and job_id in batch.attributes["digitflow.job_ids"]
        assert (hop.trace_id, parent.span_id, {"digitflow.job_id": job_id}) in batch.links
        assert hop.links == [
            (batch.trace_id, batch.span_id, {"digitflow.batch_id": batch.attributes["digitflow.batch_id"]})
        ]
        parent = hop


def test_a_batch_span_keeps_a_link_for_each_of_its_jobs(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    """OTel keeps 128 links per span by default; a batch holds up to 1024 jobs, and every one
    is linked (through the real SDK, exporter and receiver)."""
    from digitflow import tracing

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.delenv("OTEL_SPAN_LINK_COUNT_LIMIT", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    tracing.configure("linktest")
    parents = [f"00-{i + 1:032x}-{i + 1:016x}-01" for i in range(300)]
    batch = tracing.start_batch(
        "inference", "b1", [{"job_id": f"j{i}", "model": "digits", "traceparent": tp} for i, tp in enumerate(parents)]
    )
    assert batch is not None
    forward = batch.end({"j7": "no_ink"})
    tracing.flush()
    spans = receiver.received()
    (batch_span,) = [s for s in spans if s.name == "inference batch"]
    assert batch_span.service == "linktest" and len(batch_span.links) == 300
    assert {link[0] for link in batch_span.links} == {tp.split("-")[1] for tp in parents}
    jobs = {s.attributes["digitflow.job_id"]: s for s in spans if s.name == "inference"}
    assert len(jobs) == 300 and jobs["j7"].attributes["digitflow.error_code"] == "no_ink"
    assert jobs["j3"].trace_id == parents[3].split("-")[1] and jobs["j3"].parent_id == parents[3].split("-")[2]
    assert forward["j3"].split("-")[1:3] == [jobs["j3"].trace_id, jobs["j3"].span_id]
