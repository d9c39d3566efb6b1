"""Stand-in for the Jaeger all-in-one image where none can be pulled: an OTLP/HTTP trace receiver.

It accepts what digitflow's services send Jaeger (``POST /v1/traces`` on 4318, protobuf, as
opentelemetry-proto's ExportTraceServiceRequest) and answers the part of Jaeger's query API that
the deployment tests and a person with curl use, in Jaeger's JSON shape: ``GET /api/services``
and ``GET /api/traces/<trace id>`` on 16686. ``GET /status`` on 13133 is the health check
compose.yaml calls. Spans live in memory, the newest MAX_SPANS of them, as Jaeger's in-memory
storage keeps them. A normal Docker host runs the real Jaeger and never builds this.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MAX_SPANS = 100_000
SPANS: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
LOCK = threading.Lock()


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _tags(pairs: Any) -> list[dict[str, Any]]:
    return [{"key": kv.key, "value": _value(kv.value)} for kv in pairs]


def store(body: bytes) -> int:
    """Keep every span of one export; the oldest go once MAX_SPANS are held."""
    request = ExportTraceServiceRequest.FromString(body)
    count = 0
    with LOCK:
        for resource_spans in request.resource_spans:
            resource = {t["key"]: t["value"] for t in _tags(resource_spans.resource.attributes)}
            service = str(resource.get("service.name", "unknown_service"))
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = {
                        "traceID": s.trace_id.hex(),
                        "spanID": s.span_id.hex(),
                        "operationName": s.name,
                        "references": [
                            {"refType": "CHILD_OF", "traceID": s.trace_id.hex(), "spanID": s.parent_span_id.hex()}
                        ]
                        if s.parent_span_id
                        else [],
                        "startTime": s.start_time_unix_nano // 1000,
                        "duration": (s.end_time_unix_nano - s.start_time_unix_nano) // 1000,
                        "tags": _tags(s.attributes),
                        "service": service,
                    }
                    SPANS[(span["traceID"], span["spanID"])] = span
                    count += 1
        while len(SPANS) > MAX_SPANS:
            SPANS.popitem(last=False)
    return count


def trace(trace_id: str) -> dict[str, Any] | None:
    """One trace in Jaeger's shape: spans name their process, processes name their service."""
    with LOCK:
        spans = [dict(s) for (tid, _), s in SPANS.items() if tid == trace_id]
    if not spans:
        return None
    services = sorted({s["service"] for s in spans})
    pid = {name: f"p{i + 1}" for i, name in enumerate(services)}
    for s in spans:
        s["processID"] = pid[s.pop("service")]
    processes = {p: {"serviceName": name, "tags": []} for name, p in pid.items()}
    return {"traceID": trace_id, "spans": spans, "processes": processes}


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._reply(status, json.dumps(doc).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self._json(404, {"error": "only POST /v1/traces with application/x-protobuf"})
            return
        try:
            store(body)
        except Exception as exc:  # a malformed export is the sender's error, not a crash
            self._json(400, {"error": str(exc)})
            return
        self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self) -> None:
        if self.path == "/status":
            self._json(200, {"status": "Server available"})
        elif self.path == "/api/services":
            with LOCK:
                names = sorted({s["service"] for s in SPANS.values()})
            self._json(200, {"data": names, "total": len(names)})
        elif self.path.startswith("/api/traces/"):
            found = trace(self.path.removeprefix("/api/traces/").split("?")[0].lower())
            if found is None:
                self._json(404, {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]})
            else:
                self._json(200, {"data": [found], "total": 1})
        else:
            self._json(404, {"error": "not found"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    servers = [ThreadingHTTPServer(("0.0.0.0", port), Handler) for port in (4318, 16686, 13133)]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("trace receiver: OTLP/HTTP on 4318, query API on 16686, health on 13133", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
