"""Hostile clients against a real stack: slow bodies, oversized uploads (docs/reliability.md,
"Hostile clients and lost work"). Every loop is bounded in count and time."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
import requests

from tests.conftest import RedisServer
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.slow_clients import slow_clients, wait_closed
from tests.stacks import Stack, start_stack

pytestmark = pytest.mark.slow
SLOW_CLIENTS = 500
CHANNEL_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(9)
    redis.Redis.from_url(url).flushdb()
    env = {"GATEWAY_CHANNEL_TIMEOUT_S": str(CHANNEL_TIMEOUT_S), "MAX_UPLOAD_MB": "10"}
    stack = start_stack(url, tmp_path_factory.mktemp("hostile-clients"), env=env)
    yield stack
    stack.close()


def port_of(stack: Stack) -> int:
    return int(urlsplit(stack.base_url).port or 80)


def test_500_slow_clients_neither_stall_the_gateway_nor_stay_connected(stack: Stack) -> None:
    """500 sockets that each sent a head and 10 bytes of a declared 100 KB body: /healthz and a
    real job still answer (measured times printed; docs/reliability.md states them), and the
    server cuts the stalled bodies off after GATEWAY_CHANNEL_TIMEOUT_S. Under gunicorn gthread
    (64 threads) 80 such sockets made /healthz time out."""
    digit, label = heldout_digits(1, seed=5)[0]
    photo = paper_photo(digit)
    with slow_clients(port_of(stack), SLOW_CLIENTS) as clients:
        assert len(clients.sockets) == SLOW_CLIENTS
        time.sleep(0.5)  # let the server take them all in
        start = time.monotonic()
        health = requests.get(f"{stack.base_url}/healthz", timeout=5)
        health_s = time.monotonic() - start
        start = time.monotonic()
        job = requests.post(
            f"{stack.base_url}/v1/jobs",
            data=photo,
            headers={"Content-Type": "image/jpeg", "Prefer": "wait=10"},
            timeout=10,
        )
        job_s = time.monotonic() - start
        assert health.status_code == 200
        assert job.status_code == 200 and job.json()["result"]["label"] == label, job.text[:300]
        closed, waited = wait_closed(clients, SLOW_CLIENTS, timeout_s=CHANNEL_TIMEOUT_S * 4)
        print(
            f"\n{SLOW_CLIENTS} slow clients held: /healthz {health_s * 1000:.0f} ms, job {job_s * 1000:.0f} ms;"
            f" {closed} cut off {waited + 0.5:.1f} s after opening (timeout {CHANNEL_TIMEOUT_S} s)"
        )
        assert closed == SLOW_CLIENTS, f"only {closed} of {SLOW_CLIENTS} stalled bodies were cut off"


def oversized_body(mb: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00" * (mb * 1024 * 1024)


def test_urllib_reads_the_json_413_of_a_30_mb_upload(stack: Stack) -> None:
    """urllib sends the whole body before it reads the answer: the server must drain it (up to
    a bound) and answer the JSON 413, not close while the client still sends (a broken pipe)."""
    body = oversized_body(30)
    request = urllib.request.Request(
        f"{stack.base_url}/v1/jobs", data=body, headers={"Content-Type": "image/png"}, method="POST"
    )
    start = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    print(f"\n30 MB upload refused in {(time.monotonic() - start) * 1000:.0f} ms (urllib)")
    assert caught.value.code == 413
    assert json.loads(caught.value.read())["error"]["code"] == "payload_too_large"


def test_requests_reads_the_json_413_of_a_30_mb_upload(stack: Stack) -> None:
    body = oversized_body(30)
    response = requests.post(f"{stack.base_url}/v1/jobs", data=body, headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_body_past_the_drain_bound_is_refused_from_its_head(stack: Stack) -> None:
    """A declared body above GATEWAY_MAX_BODY_MB (64 MB here) is refused as soon as its head is
    read, in the same JSON shape, without waiting for a byte of it."""
    with socket.create_connection(("127.0.0.1", port_of(stack)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n"
        )
        answer = b""
        while b"}}" not in answer and len(answer) < 10_000:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(body)["error"]["code"] == "payload_too_large"
