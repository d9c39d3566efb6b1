"""Flower in a real browser against the real stack: the Flower ``make run`` starts
(``python -m digitflow_cli.flower`` from the supervisor's specs), the three stage workers and the
registry service, all on one Redis.

Flower's remote control (``enable_events`` every few seconds, ``inspect``, ``revoke``) must reach
the workers, which accept msgpack and JSON and refuse pickle; its Broker page must list every
digitflow queue with its depth, even a queue whose workers are all down.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from digitflow_cli.supervisor import ServiceSpec, StackConfig, build_specs, free_port
from tests.conftest import RedisServer, wait_until
from tests.e2e import test_web
from tests.e2e.test_web import ARTIFACTS
from tests.integration.models_support import wait_for_registry
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.stacks import Stack, start_stack

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

pytestmark = pytest.mark.e2e
QUEUES = ("preprocess", "inference", "postprocess", "registry", "monitor", "training")
SERVICES = ("preprocess", "inference", "postprocess", "registry")
REFUSAL = re.compile(r"ContentDisallowed|Refusing to deserialize|untrusted content")


@dataclasses.dataclass
class FlowerStack:
    stack: Stack
    url: str

    def workers(self) -> dict[str, Any]:
        """Flower's view of the workers (``refresh`` makes it inspect them now)."""
        response = requests.get(f"{self.url}/api/workers", params={"refresh": "1"}, timeout=30)
        response.raise_for_status()
        return response.json()

    def worker_of(self, service: str) -> str:
        return next(name for name in self.workers() if name.startswith(f"{service}-"))


@pytest.fixture(scope="module")
def flower(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerStack]:
    url = redis_server.url(12)
    client = redis.Redis.from_url(url)
    client.flushdb()
    port = free_port()

    def flower_spec(config: StackConfig) -> list[ServiceSpec]:
        specs = build_specs(dataclasses.replace(config, flower=True, flower_port=port))
        return [spec for spec in specs if spec.name == "flower"]

    stack = start_stack(url, tmp_path_factory.mktemp("flower-stack"), extra_specs=flower_spec)
    found = FlowerStack(stack, f"http://127.0.0.1:{port}")

    def every_worker_inspected() -> bool:
        stack.supervisor.poll()
        try:
            workers = found.workers()
        except requests.RequestException:
            return False
        seen = {name.split("-")[0] for name, info in workers.items() if info.get("active_queues")}
        return seen >= set(SERVICES)

    try:
        wait_for_registry(stack, ("digits",), servers=1)  # jobs are accepted once the model view is there
        wait_until(every_worker_inspected, timeout_s=90, interval_s=1.0, what="Flower inspects every worker")
        yield found
    finally:
        stack.close()
        client.flushdb()
        client.close()


# The same Chromium fixture as the web page tests (Debian's browser, quiet flags).
browser = test_web.browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    # Wide enough that the Broker page shows its "Messages" column.
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


def depth_on_page(page: Page, queue: str) -> int:
    return int(page.locator(f"tr[id='{queue}'] td").nth(1).inner_text().strip())


def test_workers_page_and_worker_page_show_pool_queues_config_and_revoke(flower: FlowerStack, page: Page) -> None:
    page.goto(f"{flower.url}/workers")
    for service in SERVICES:
        expect(page.get_by_role("link", name=re.compile(rf"\b{service}-\d+-"))).to_be_visible(timeout=20_000)

    name = flower.worker_of("preprocess")
    revoked = str(uuid.uuid4())
    response = requests.post(f"{flower.url}/api/task/revoke/{revoked}", timeout=30)
    assert response.status_code == 200, response.text

    page.goto(f"{flower.url}/worker/{name}")
    expect(page.locator("#tab-pool")).to_contain_text("prefork")
    page.locator("#worker-tab-queues").click()
    expect(page.locator("#worker-queues")).to_contain_text("preprocess")
    page.locator("#worker-tab-config").click()
    expect(page.locator("#tab-config")).to_contain_text("accept_content")
    expect(page.locator("#tab-config")).to_contain_text("msgpack")
    page.locator("#worker-tab-tasks").click()
    # The revoke reached the worker, and its `inspect revoked` answer made it back to Flower.
    expect(page.locator("#tab-tasks")).to_contain_text(revoked)


def test_celery_inspect_reaches_the_workers(flower: FlowerStack) -> None:
    """`celery -A <service> inspect active_queues` (msgpack both ways) answers from every worker.

    A bare `celery -b URL inspect ping` sends JSON, which the workers now accept: they answer
    in msgpack, which that bare client (accepting JSON only) refuses to read. Its error names
    the msgpack reply, so the JSON request was accepted; a refused request gets no reply at all.
    """
    env = {**os.environ, "REDIS_URL": flower.stack.config.redis_url, "VAR_DIR": str(flower.stack.config.var_dir)}
    argv = [sys.executable, "-m", "celery", "-A", "preprocess_worker.worker:app", "inspect", "active_queues"]
    found = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stdout + found.stderr
    for service in SERVICES:
        assert re.search(rf"{service}-\S+: OK", found.stdout), found.stdout
    assert "'name': 'preprocess'" in found.stdout and "'name': 'registry'" in found.stdout
    bare = [sys.executable, "-m", "celery", "-b", flower.stack.config.redis_url, "inspect", "ping"]
    pinged = subprocess.run(bare, env=env, capture_output=True, text=True, timeout=120)
    assert "content of type msgpack" in pinged.stdout + pinged.stderr, pinged.stdout + pinged.stderr


def test_broker_page_lists_every_queue_and_depth_rises_while_a_stage_is_down(flower: FlowerStack, page: Page) -> None:
    stack = flower.stack
    page.goto(f"{flower.url}/broker")
    for queue in QUEUES:
        expect(page.locator(f"tr[id='{queue}']")).to_be_visible()
    assert depth_on_page(page, "preprocess") == 0

    spec = stack.supervisor.running["preprocess"].spec
    stack.supervisor.stop("preprocess")
    answers = [stack.submit(paper_photo(digit), "image/jpeg") for digit, _ in heldout_digits(3)]
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    ids = [a.json()["job_id"] for a in answers]

    def depth_shown() -> bool:
        page.reload()
        return depth_on_page(page, "preprocess") >= 1

    wait_until(depth_shown, timeout_s=30, interval_s=0.5, what="the broker page shows preprocess work")
    expect(page.locator("tr[id='preprocess']")).to_be_visible()  # listed although no worker consumes it
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "flower_broker.png"), full_page=True)
    metrics = requests.get(f"{stack.base_url}/metrics", timeout=10).text
    work = re.search(r'^digitflow_queue_work\{queue="preprocess"\} (\S+)$', metrics, re.MULTILINE)
    assert work and float(work.group(1)) >= 1, metrics

    stack.supervisor.start(spec)
    for job_id in ids:
        assert stack.job(job_id, wait=60)["status"] == "succeeded"
    page.reload()
    assert depth_on_page(page, "preprocess") == 0


def test_worker_logs_hold_no_refusal(flower: FlowerStack) -> None:
    """By now Flower has sent `enable_events` every 5 s and inspected every worker for a while."""
    logs: dict[str, str] = {}
    for path in sorted(Path(flower.stack.log_dir).glob("*.log")):
        logs[path.name] = path.read_text(errors="replace")
    assert {f"{s}.log" for s in SERVICES} <= set(logs)
    assert '"event": "batch_done"' in logs["postprocess.log"] or "batch_done" in logs["postprocess.log"]
    refusals = {name: REFUSAL.findall(text) for name, text in logs.items() if REFUSAL.search(text)}
    assert refusals == {}
