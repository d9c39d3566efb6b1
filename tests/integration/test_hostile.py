"""Hostile input: API fuzzing from the OpenAPI description, and pickle injected into a queue."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings

from digitflow.settings import GatewaySettings
from gateway import create_app
from tests.conftest import RedisServer
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.stacks import Stack, start_stack


@pytest.fixture
def fuzz_app(redis_url: str) -> Iterator[Flask]:
    app = create_app(GatewaySettings(redis_url=redis_url, max_upload_mb=1.0, max_wait_s=0.2))
    yield app
    app.extensions["digitflow"].close()


def test_api_fuzzed_from_its_openapi_description(fuzz_app: Flask) -> None:
    """Every operation, with generated valid and invalid inputs: never a 5xx, and every error
    has the one JSON shape. Bounded: 40 examples per operation."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    # The operations that take input (health endpoints take none and may rightly answer 503).
    operations = [op for op in (result.ok() for result in schema.get_all_operations()) if op.path.startswith("/v1/")]
    assert {op.path for op in operations} == {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/feedback",
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/promote",
        "/v1/models/{name}/rollback",
        "/v1/models/{name}/canary",
        "/v1/models/{name}/canary/promote",
        "/v1/models/{name}/canary/abort",
        "/v1/models/{name}/servable",
        "/v1/monitoring/{model}",
    }
    seen: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
                body = response.json()
                assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body

        check()
    assert any(code >= 400 for code in seen), "the fuzzer never produced a bad request"


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(8)
    redis.Redis.from_url(url).flushdb()
    # An admin token is set, so the admin actions answer 401/403 as in production (not admin_disabled).
    stack = start_stack(url, tmp_path_factory.mktemp("hostile"), env={"ADMIN_TOKEN": "hostile-admin-token-0123"})
    yield stack
    stack.close()


def test_schemathesis_run_with_every_check_finds_no_contract_failure(stack: Stack, tmp_path: Path) -> None:
    """``schemathesis run /openapi.json --checks all`` against a live stack: the spec states
    every bound the API enforces (a valid request is never refused, an invalid one never
    accepted), every answer matches its schema, and a 405 carries ``Allow``. Bounded: 30
    examples per operation and phase, a fixed seed."""
    cli = Path(sys.executable).with_name("schemathesis")
    config = Path(__file__).with_name("schemathesis.toml")
    argv = [str(cli), "--config-file", str(config), "run", f"{stack.base_url}/openapi.json", "--checks", "all"]
    argv += ["--max-examples", "30"]
    argv += ["--seed", "13", "--no-color"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated is not None and generated.group(1) == generated.group(2), done.stdout[-3000:]
    print(f"\nschemathesis run --checks all: {generated.group(0)}")


def pickled_message(queue: str, task: str, marker: Path) -> bytes:
    """A Celery message whose body is a pickle that would run a shell command if unpickled.

    Written as raw protocol-0 opcodes so no pickle module is needed to make it.
    """
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    task_id = str(uuid.uuid4())
    envelope = {
        "body": base64.b64encode(payload).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "root_id": task_id,
            "argsrepr": "()",
            "kwargsrepr": "{}",
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(("queue", "task"), [("preprocess", "preprocess.run"), ("postprocess", "postprocess.run")])
def test_a_pickled_message_is_refused_and_runs_nothing(stack: Stack, tmp_path: Path, queue: str, task: str) -> None:
    marker = tmp_path / "pwned"
    client = redis.Redis.from_url(stack.config.redis_url)
    client.lpush(queue, pickled_message(queue, task, marker))
    deadline = time.monotonic() + 10
    while client.llen(queue) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    assert client.llen(queue) == 0, "the worker must take the message off the queue"
    assert not marker.exists(), "the pickle was executed"
    log = (stack.log_dir / f"{queue}.log").read_text()
    assert "pickle" in log and ("Refusing" in log or "ContentDisallowed" in log or "disallowed" in log.lower())
    # The worker is still alive and serving.
    digit, label = heldout_digits(1, seed=21)[0]
    job = stack.submit(paper_photo(digit), "image/jpeg", wait=15).json()
    assert job["status"] == "succeeded" and job["result"]["label"] == label
