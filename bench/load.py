"""Closed-loop HTTP load generator, run as its own process so its CPU is counted on its own.

    python -m bench.load --url URL --images DIR --mode poll|prefer|batch --inflight N ...

``--inflight`` client threads each keep one job in flight: submit one image (a multipart
upload with one ``image`` part), wait for its answer, submit the next. Each thread keeps one
HTTP/1.1 keep-alive connection (stdlib ``http.client``) and opens a new one only when the server
closed it. Modes:

* ``poll``: ``POST /v1/jobs``, then ``GET /v1/jobs/<id>?wait=W`` until the job is finished;
* ``prefer``: ``POST /v1/jobs`` with ``Prefer: wait=W`` (one round trip; polls if answered 202);
* ``batch``: ``--total`` images in requests of ``--parts`` parts (``Prefer: wait=W``),
  ``--inflight`` requests at a time; the window is the whole run.

Latency is submit-to-answer per job. The process prints ``START`` and ``END`` lines when the
measurement window opens and closes (the parent reads CPU counters then), and last a line
``RESULT {json}``. Jobs answered outside the window are not counted.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.images import BenchImage, read_images

BOUNDARY = "benchboundary7d3f0a9c"
RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest)


def multipart(images: list[BenchImage]) -> bytes:
    """A multipart/form-data body with one ``image`` part per image."""
    chunks = []
    for im in images:
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{im.name}"\r\n'
        chunks += [head.encode(), f"Content-Type: {im.content_type}\r\n\r\n".encode(), im.data, b"\r\n"]
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


@dataclass
class Tally:
    """What the client threads saw inside the window (guarded by ``lock``)."""

    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    correct: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    reconnects: int = 0
    # Sums of the server-side timings (``timings_ms`` of each answered job), by "stage.part".
    timing_sums: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Client:
    """One keep-alive connection; ``call`` reconnects once if the server had closed it."""

    def __init__(self, host: str, port: int, tally: Tally) -> None:
        self.host, self.port, self.tally = host, port, tally
        self.conn = http.client.HTTPConnection(host, port, timeout=60)
        self.requests = 0

    def call(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                payload = response.read()
                self.requests += 1
                return response.status, _json_or_none(payload)
            except RETRYABLE:
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
                with self.tally.lock:
                    self.tally.reconnects += 1
        raise AssertionError("unreachable")

    def reset(self) -> None:
        """Drop the connection after an error that may have left it mid-response."""
        self.conn.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)


def _json_or_none(payload: bytes) -> Any:
    """The parsed body; None for an empty or non-JSON one (e.g. a plain-text 503), which the
    caller counts under the answer's HTTP status rather than as a client crash."""
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return None


def error_code(status: int, body: Any) -> str:
    """``http_<status>:<code>`` of a refused request; ``error`` may be digitflow's object or a
    peer's plain string (BentoML: ``{"error": "..."}``)."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code", "?") if isinstance(err, dict) else str(err)[:40] if err else "?"
    return f"http_{status}:{code}"


def answers(client: Client, status: int, body: Any, wait_s: float, deadline: float, n: int) -> list[dict[str, Any]]:
    """Job views for a submission of ``n`` images, polling the unfinished ones until ``deadline``."""
    if status >= 400 or not isinstance(body, dict | list):
        return [{"status": "http_error", "error": {"code": error_code(status, body)}}] * n
    # A list is BentoML's answer to a batchable API (bench.bentoml_service): one view per part.
    jobs = body if isinstance(body, list) else body.get("jobs", [body])
    done = []
    for job in jobs:
        while job.get("status") not in ("succeeded", "failed") and time.monotonic() < deadline:
            status, body = client.call("GET", f"/v1/jobs/{job['job_id']}?wait={wait_s:g}", None, {})
            if status >= 400 or not isinstance(body, dict):
                job = {"status": "http_error", "error": {"code": error_code(status, body)}}
                break
            job = body
        done.append(job)
    return done


def record(tally: Tally, jobs: list[dict[str, Any]], labels: list[int], latency_ms: float) -> None:
    with tally.lock:
        if len(jobs) != len(labels):  # an answer that lost or invented jobs: count the difference
            tally.failed[f"answer_has_{len(jobs)}_of_{len(labels)}_jobs"] += abs(len(labels) - len(jobs))
        for job, label in zip(jobs, labels, strict=False):
            if job.get("status") == "succeeded":
                tally.ok += 1
                tally.correct += int(job["result"]["label"] == label)
                tally.latencies_ms.append(latency_ms)
                for stage, value in (job.get("timings_ms") or {}).items():
                    parts = value.items() if isinstance(value, dict) else [("", value)]
                    for part, ms in parts:
                        if isinstance(ms, int | float):
                            key = f"{stage}.{part}".rstrip(".")
                            tally.timing_sums[key] = tally.timing_sums.get(key, 0.0) + ms
            else:
                err = job.get("error") or {}
                tally.failed[f"{job.get('status')}:{err.get('stage', '-')}:{err.get('code', '?')}"] += 1


def run(args: argparse.Namespace) -> dict[str, Any]:
    images = read_images(Path(args.images))
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    tally, lock, counter = Tally(), threading.Lock(), itertools.count()
    wait = f"wait={args.wait:g}"
    if args.mode == "batch":
        sent = [images[i % len(images)] for i in range(args.total)]
        requests = [sent[i : i + args.parts] for i in range(0, len(sent), args.parts)]
        bodies = [multipart(group) for group in requests]
    else:
        requests = [[im] for im in images]
        bodies = [multipart(group) for group in requests]
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if args.mode in ("prefer", "batch"):
        headers["Prefer"] = wait
    start = time.monotonic() + (0 if args.mode == "batch" else args.warmup)
    end = start + args.duration
    stop = threading.Event()

    def worker() -> None:
        client = Client(host, port, tally)
        while not stop.is_set():
            with lock:
                i = next(counter)
            if args.mode == "batch" and i >= len(requests):
                return
            i %= len(requests)
            t0 = time.monotonic()
            try:
                status, body = client.call("POST", "/v1/jobs", bodies[i], headers)
                jobs = answers(client, status, body, args.wait, t0 + args.timeout, len(requests[i]))
            except Exception as exc:  # every failure is counted, none ends the run
                client.reset()
                jobs = [{"status": "client_error", "error": {"code": type(exc).__name__}}] * len(requests[i])
            t1 = time.monotonic()
            if args.mode == "batch" or start <= t1 <= end:
                record(tally, jobs, [im.label for im in requests[i]], (t1 - t0) * 1000.0)
        with tally.lock:
            tally.requests += client.requests

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.inflight)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, start - time.monotonic()))
    print("START", flush=True)
    t_start = time.monotonic()
    if args.mode == "batch":
        for thread in threads:
            thread.join()
    else:
        time.sleep(max(0.0, end - time.monotonic()))
    t_end = time.monotonic()
    print("END", flush=True)
    stop.set()
    for thread in threads:
        thread.join(timeout=args.timeout)
    return {
        "mode": args.mode,
        "inflight": args.inflight,
        "parts": args.parts if args.mode == "batch" else None,
        "window_s": round(t_end - t_start, 4),
        "ok": tally.ok,
        "correct": tally.correct,
        "failed": dict(tally.failed),
        "requests": tally.requests,
        "reconnects": tally.reconnects,
        "server_timings_ms": {k: round(v / tally.ok, 3) for k, v in sorted(tally.timing_sums.items())}
        if tally.ok
        else {},
        "latencies_ms": [round(x, 3) for x in tally.latencies_ms],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--images", required=True, help="a directory written by bench.images.write_images")
    parser.add_argument("--mode", choices=["poll", "prefer", "batch"], default="poll")
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--wait", type=float, default=10.0, help="seconds of long-poll / Prefer: wait")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up on a job after this many seconds")
    parser.add_argument("--parts", type=int, default=50)
    parser.add_argument("--total", type=int, default=1000)
    return parser


def main(argv: list[str] | None = None) -> int:
    result = run(build_parser().parse_args(argv))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
