"""The gateway's HTTP server: waitress running ``gateway:create_app()`` (``python -m gateway.serve``).

Why waitress (measured in docs/reliability.md, "Hostile clients and lost work"): one I/O thread
reads every request whole (head and body, spooled to a temporary file past 512 KB) before a
worker thread sees it, so a slow client costs a socket and a buffer, never a thread. gunicorn's
gthread workers read the body inside the app thread (80 slow uploads stalled ``/healthz``), and
granian hands the app a streaming body whose reads block its blocking threads the same way.
Idle connections are closed after ``GATEWAY_CHANNEL_TIMEOUT_S``; the number of connections is
bounded by ``GATEWAY_CONNECTION_LIMIT``. A body up to ``GATEWAY_MAX_BODY_MB`` (above the upload
limit) is read whole, so a client that sends an oversized upload still reads the JSON 413 the
app answers (rather than a reset while it is still sending); larger ones are refused by waitress
itself after its head is read.

One process per gateway: ``GATEWAY_WORKERS`` processes share one listening socket (forked after
it is bound, before the app is built), so its background threads start in each.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

logger = logging.getLogger("gateway.serve")
# Errors waitress answers itself, before the app runs, in the API's one error shape.
SERVER_ERROR_CODES = {400: "invalid_request", 413: "payload_too_large", 431: "headers_too_large"}


def _json_error_task() -> type:
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            err = self.request.error
            code = SERVER_ERROR_CODES.get(err.code, "invalid_request")
            body = json.dumps({"error": {"code": code, "message": f"{err.reason}: {err.body}"}}).encode()
            self.status = f"{err.code} {err.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    return JsonErrorTask


@dataclass(frozen=True)
class ServerOptions:
    """Server settings from the environment (defaults in brackets in docs/operations.md)."""

    host: str
    port: int
    workers: int
    threads: int
    connection_limit: int
    channel_timeout_s: int
    max_body_bytes: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServerOptions:
        env = dict(os.environ) if env is None else env
        host, _, port = env.get("GATEWAY_BIND", "127.0.0.1:8000").rpartition(":")
        upload_mb = float(env.get("MAX_UPLOAD_MB", "10"))
        return cls(
            host=host.strip("[]") or "0.0.0.0",
            port=int(port),
            workers=max(1, int(env.get("GATEWAY_WORKERS", "1"))),
            threads=max(1, int(env.get("GATEWAY_THREADS", "64"))),
            connection_limit=max(1, int(env.get("GATEWAY_CONNECTION_LIMIT", "2000"))),
            channel_timeout_s=max(1, int(env.get("GATEWAY_CHANNEL_TIMEOUT_S", "10"))),
            max_body_bytes=int(float(env.get("GATEWAY_MAX_BODY_MB", str(max(64.0, 4 * upload_mb)))) * 1024 * 1024),
        )


def listen(options: ServerOptions) -> socket.socket:
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    sock.listen(1024)
    return sock


def serve(sock: socket.socket, options: ServerOptions) -> None:
    """Build the app in this process and serve ``sock`` until SIGTERM/SIGINT."""
    from waitress.server import create_server

    from gateway import create_app

    app = create_app()
    # The maintenance loop (backlog adoption, deadline sweep) runs from the start, not from the
    # first request: a restarted gateway with no traffic must still adopt its predecessor's jobs.
    app.extensions["digitflow"].ensure_started()
    server = create_server(
        app,
        sockets=[sock],
        threads=options.threads,
        connection_limit=options.connection_limit,
        channel_timeout=options.channel_timeout_s,
        # How often idle channels are checked: a tenth of the timeout, so a stalled body is cut
        # off within 1.1 x GATEWAY_CHANNEL_TIMEOUT_S.
        cleanup_interval=max(1, options.channel_timeout_s // 10),
        max_request_body_size=options.max_body_bytes,
        max_request_header_size=64 * 1024,
        asyncore_use_poll=True,  # select() stops at 1024 descriptors
        ident="digitflow",
        clear_untrusted_proxy_headers=True,
    )
    from waitress.channel import HTTPChannel

    channel = type("JsonErrorChannel", (HTTPChannel,), {"error_task_class": _json_error_task()})
    server.channel_class = channel

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # leaves waitress's loop in the main thread

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    finally:
        # The batcher's unsent jobs stay listed in Redis; marking this gateway gone lets a live
        # one adopt them at once instead of after DEAD_AFTER_S.
        app.extensions["digitflow"].close()


def _reset_metrics_dir() -> None:
    """Empty prometheus_client's multiprocess folder once, before any process writes to it."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def main() -> None:
    options = ServerOptions.from_env()
    _reset_metrics_dir()
    sock = listen(options)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logger.info("gateway listening on %s:%d (%d process(es))", options.host, options.port, options.workers)
    if options.workers == 1:
        serve(sock, options)
        return
    children: list[int] = []
    for _ in range(options.workers):
        pid = os.fork()
        if pid == 0:
            serve(sock, options)
            os._exit(0)
        children.append(pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # The parent only waits: a child that dies takes the gateway down, and the supervisor
    # (or compose's restart policy) restarts the whole group.
    pid, _ = os.wait()
    children.remove(pid)
    forward(signal.SIGTERM, None)
    for child in children:
        os.waitpid(child, 0)
    sys.exit(1)


if __name__ == "__main__":
    main()
