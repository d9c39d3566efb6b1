"""Two checkouts on one machine: `digitflow run` (what `make run` calls) from two folders, both
pointed at the same Redis. The first holds it; the second does not join the first's queues but
starts its own private Redis and says so in one line. Both serve jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from digitflow.keys import workers
from digitflow_cli import deployment
from digitflow_cli.supervisor import free_port
from tests.conftest import RedisServer
from tests.e2e.test_make_run import CLI, ROOT
from tests.integration.test_pipeline import heldout_digits, paper_photo

pytestmark = pytest.mark.e2e


def start(var: Path, redis_url: str) -> tuple[subprocess.Popen[str], str, str]:
    """`digitflow run` in its own folder until it is ready; (process, gateway URL, its output)."""
    port = free_port()
    metrics = ",".join(str(free_port()) for _ in range(3))
    argv = [*CLI, "run", "--no-monitoring", "--port", str(port), "--flower-port", str(free_port())]
    argv += ["--metrics-ports", metrics, "--registry-metrics-port", str(free_port()), "--preprocess-workers", "1"]
    env = {**os.environ, "REDIS_URL": redis_url, "VAR_DIR": str(var)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not any("Ctrl-C stops everything" in line for line in lines):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    return proc, f"http://127.0.0.1:{port}", "".join(lines)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    return rest


def job_status(base: str, seed: int) -> str:
    digit, _ = heldout_digits(1, seed=seed)[0]
    files = {"image": ("d.jpg", paper_photo(digit), "image/jpeg")}
    created = requests.post(f"{base}/v1/jobs", files=files, headers={"Prefer": "wait=20"}, timeout=40).json()
    return str(created["status"])


@pytest.fixture
def shared(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url(3)
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def test_a_second_checkout_gets_its_own_redis_instead_of_joining_the_first(shared: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(shared)
    first, first_url, first_out = start(tmp_path / "a" / "var", shared)
    try:
        assert "digitflow is ready" in first_out, first_out
        first_id = deployment.deployment_id(tmp_path / "a" / "var")
        assert f"using Redis at {shared} (deployment {first_id})" in first_out
        assert (deployment.owner(client) or {}).get("id") == first_id
        second, second_url, second_out = start(tmp_path / "b" / "var", shared)
        try:
            assert "digitflow is ready" in second_out, second_out
            second_id = deployment.deployment_id(tmp_path / "b" / "var")
            assert second_id != first_id
            assert f"Redis at {shared} serves another live deployment {first_id}" in second_out
            assert "starting a private redis-server" in second_out and "REDIS_URL" in second_out
            assert job_status(first_url, 1) == "succeeded" and job_status(second_url, 2) == "succeeded"
            # Only the first deployment's workers consume from the shared Redis.
            for stage in ("preprocess", "inference", "postprocess"):
                members = [m.decode() for m in client.zrange(workers(stage), 0, -1)]
                assert members and all(f"-{first.pid}-" in m for m in members), (stage, members)
            assert (deployment.owner(client) or {}).get("id") == first_id
        finally:
            stop(second)
    finally:
        stop(first)
    assert deployment.owner(client) is None  # released at Ctrl-C: the next run need not wait
    # A third run from the second folder now takes the (free) shared Redis over, and says so.
    third, _, third_out = start(tmp_path / "b" / "var", shared)
    try:
        assert f"using Redis at {shared} (deployment {second_id})" in third_out, third_out
        assert f"last served deployment {first_id}" in third_out
    finally:
        stop(third)
