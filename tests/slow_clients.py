"""Slow and oversized HTTP clients against a local server, bounded in count and time.

Used by tests/integration/test_hostile_clients.py; every socket it opens is closed on exit.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

SLOW_HEAD = (
    b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
    b"Content-Length: 100000\r\n\r\n" + b"\x89PNG\r\n\x1a\n\x00\x00"
)


@dataclass
class SlowClients:
    """``count`` sockets that each sent a request head and 10 bytes of a declared 100 KB body."""

    sockets: list[socket.socket] = field(default_factory=list)
    opened_at: float = 0.0

    def closed_by_server(self) -> int:
        """How many of the sockets the server has closed (EOF, reset, or an error answer)."""
        closed = 0
        for sock in self.sockets:
            try:
                data = sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue  # still open, nothing said
            except OSError:
                closed += 1
                continue
            closed += 1 if data == b"" or data.startswith(b"HTTP/") else 0
        return closed


@contextlib.contextmanager
def slow_clients(port: int, count: int, open_timeout_s: float = 30.0) -> Iterator[SlowClients]:
    clients = SlowClients()
    deadline = time.monotonic() + open_timeout_s
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(SLOW_HEAD)
            clients.sockets.append(sock)
        clients.opened_at = time.monotonic()
        yield clients
    finally:
        for sock in clients.sockets:
            sock.close()


def wait_closed(clients: SlowClients, want: int, timeout_s: float) -> tuple[int, float]:
    """Poll until ``want`` sockets are closed by the server; returns (closed, seconds waited)."""
    start = time.monotonic()
    closed = clients.closed_by_server()
    while closed < want and time.monotonic() - start < timeout_s:
        time.sleep(0.25)
        closed = clients.closed_by_server()
    return closed, time.monotonic() - start
