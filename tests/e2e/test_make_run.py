"""The user's path: `digitflow run` (what `make run` calls) on a machine with no Redis at
REDIS_URL, then the README's curl calls and `digitflow submit --wait`, then Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from digitflow_cli.supervisor import free_port
from tests.integration.test_pipeline import heldout_digits, paper_photo

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "digitflow_cli.main"]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    var = tmp_path_factory.mktemp("var")
    port, flower = free_port(), free_port()
    metrics = ",".join(str(free_port()) for _ in range(3))
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "VAR_DIR": str(var)}
    proc = subprocess.Popen(
        [*CLI, "run", "--port", str(port), "--flower-port", str(flower), "--metrics-ports", metrics],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    output = "".join(lines)
    assert "digitflow is ready" in output, output
    assert "starting a private redis-server" in output
    yield f"http://127.0.0.1:{port}", var, proc
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert "stopping" in rest


def test_curl_flow_from_the_readme(system: tuple[str, Path, subprocess.Popen[str]]) -> None:
    base, _, _ = system
    digit, label = heldout_digits(1, seed=11)[0]
    created = requests.post(
        f"{base}/v1/jobs", files={"image": ("seven.jpg", paper_photo(digit), "image/jpeg")}, timeout=10
    )
    assert created.status_code == 202
    job = requests.get(f"{base}/v1/jobs/{created.json()['job_id']}?wait=10", timeout=20).json()
    assert job["status"] == "succeeded" and job["result"]["label"] == label


def test_cli_submit_wait(system: tuple[str, Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    base, _, _ = system
    digit, label = heldout_digits(1, seed=12)[0]
    image = tmp_path / "digit.jpg"
    image.write_bytes(paper_photo(digit))
    out = subprocess.run(
        [*CLI, "submit", str(image), "--wait", "--url", base], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f'"label": {label}' in out.stdout


def supervisor_events(var: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (var / "log" / "supervisor.log").read_text().splitlines()]


def test_each_service_logs_to_its_own_file_and_is_restarted(system: tuple[str, Path, subprocess.Popen[str]]) -> None:
    base, var, _ = system
    for service in ("redis", "gateway", "preprocess", "inference", "postprocess", "flower"):
        assert (var / "log" / f"{service}.log").exists(), service
    starts = [
        e for e in supervisor_events(var) if e["name"] == "postprocess" and e["event"] in {"started", "restarted"}
    ]
    os.killpg(int(starts[-1]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    deadline = time.monotonic() + 60
    while not any(e["event"] == "restarted" and e["name"] == "postprocess" for e in supervisor_events(var)):
        assert time.monotonic() < deadline, "the supervisor did not restart the killed postprocess worker"
        time.sleep(0.5)
    died = [e for e in supervisor_events(var) if e["event"] == "died" and e["name"] == "postprocess"]
    assert died and died[-1]["exit_code"] == -signal.SIGKILL
    while requests.get(f"{base}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "readiness did not come back after the restart"
        time.sleep(0.5)
