"""The compose stack serves as the README says, seen from the host: curl, the CLI, Flower (in
Chromium), Prometheus, and one job's trace across the four pipeline containers."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_until
from tests.deploy.compose_stack import ComposeStack
from tests.deploy.load import photos
from tests.e2e import test_web

STAGE_SERVICES = {
    "preprocess": "preprocess_worker",
    "inference": "inference_worker",
    "postprocess": "postprocess_worker",
}
WORKER_SERVICES = {**STAGE_SERVICES, "registry": "registry_worker", "monitor": "monitor_worker"}
WORKER_SERVICES["training"] = "training_worker"
ARTIFACTS = test_web.ARTIFACTS


@pytest.fixture(scope="module")
def seven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out MNIST 7 as a phone photo: the README's `seven.jpg`."""
    data = next(d for d, label in photos(40, seed=3) if label == 7)
    path = tmp_path_factory.mktemp("photos") / "seven.jpg"
    path.write_bytes(data)
    return path


def test_readme_round_trip_with_curl(stack: ComposeStack, seven: Path) -> None:
    found = subprocess.run(
        ["curl", "-sS", "-H", "Prefer: wait=5", "-F", f"image=@{seven}", f"{stack.base_url}/v1/jobs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    body = json.loads(found.stdout)
    assert body["status"] == "succeeded", body
    assert body["result"]["label"] == 7 and body["model"]["name"] == "digits", body
    assert set(body["timings_ms"]) >= {"preprocess", "inference", "postprocess", "total"}, body
    bad = subprocess.run(
        ["curl", "-sS", "-F", "image=@/etc/hostname", f"{stack.base_url}/v1/jobs"], capture_output=True, text=True
    )
    assert json.loads(bad.stdout)["error"]["code"] == "invalid_image", bad.stdout


def test_cli_submit_wait(stack: ComposeStack, seven: Path) -> None:
    argv = [str(Path(sys.executable).with_name("digitflow")), "submit", str(seven), "--wait", "--url", stack.base_url]
    found = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    body = json.loads(found.stdout)
    assert body["status"] == "succeeded" and body["result"]["label"] == 7, body


def worker_hostnames(stack: ComposeStack, service: str) -> set[str]:
    infos = stack.engine.inspect(stack.containers(service))
    return {str(info["Config"]["Hostname"]) for info in infos}  # type: ignore[index]


def test_flower_lists_every_worker_container_and_every_stage_queue(stack: ComposeStack) -> None:
    expected = {f"{stage}@{host}" for stage, svc in WORKER_SERVICES.items() for host in worker_hostnames(stack, svc)}
    assert len(expected) == len(WORKER_SERVICES), expected
    seen: set[str] = set()

    def every_worker_listed() -> bool:
        nonlocal seen
        try:
            response = stack.session.get(
                f"{stack.flower_url}/api/workers", params={"refresh": "1"}, auth=stack.flower_auth, timeout=30
            )
        except requests.RequestException:
            return False
        seen = {name for name, info in response.json().items() if info.get("active_queues")}
        return expected <= seen

    wait_until(every_worker_listed, timeout_s=120, interval_s=2, what=f"Flower lists {sorted(expected)}")
    assert stack.session.get(f"{stack.flower_url}/api/workers", timeout=30).status_code == 401  # auth required
    lengths = stack.session.get(f"{stack.flower_url}/api/queues/length", auth=stack.flower_auth, timeout=30).json()
    listed = {queue["name"] for queue in lengths["active_queues"]}
    assert listed >= {"preprocess", "inference", "postprocess", "registry", "monitor", "training"}, lengths


# Debian's Chromium, as the web page tests drive it.
browser = test_web.browser


def test_flower_pages_in_chromium(stack: ComposeStack, browser: test_web.Browser) -> None:
    user, password = stack.flower_auth
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, http_credentials={"username": user, "password": password}
    )
    page = context.new_page()
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        page.goto(f"{stack.flower_url}/workers")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / "compose_flower_workers.png"), full_page=True)
        for stage in STAGE_SERVICES:
            test_web.expect(page.get_by_role("link", name=re.compile(rf"{stage}@\w+"))).to_be_visible(timeout=30_000)
        page.goto(f"{stack.flower_url}/broker")
        for queue in STAGE_SERVICES:
            test_web.expect(page.locator(f"tr[id='{queue}']")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "compose_flower_broker.png"), full_page=True)
    finally:
        context.close()


def test_one_jobs_trace_has_spans_from_the_four_pipeline_containers(stack: ComposeStack, seven: Path) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    answer = stack.submit(seven.read_bytes(), wait=10, headers={"traceparent": traceparent})
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
    services: set[str] = set()

    def four_services() -> bool:
        nonlocal services
        found = stack.trace(trace_id)
        if found:
            services = {p["serviceName"] for p in found["processes"].values()}
        return services >= {"gateway", "preprocess", "inference", "postprocess"}

    # The workers' span processors export every 5 s (OpenTelemetry's default schedule).
    wait_until(four_services, timeout_s=60, interval_s=1, what="spans from the gateway and the three stages")
    print(f"[deploy] trace {trace_id}: services {sorted(services)}")
