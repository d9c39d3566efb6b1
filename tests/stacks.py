"""A whole digitflow stack (gateway, three real Celery workers) for integration and e2e tests.

It is started with the same supervisor ``make run`` uses, against the test session's Redis.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from digitflow_cli.supervisor import SOLO_STAGES, ServiceSpec, StackConfig, Supervisor, build_specs, free_port


@dataclass
class Stack:
    supervisor: Supervisor
    base_url: str
    config: StackConfig
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def log_dir(self) -> Path:
        return self.config.var_dir / "log"

    def metrics_url(self, stage: str) -> str:
        port = dict(zip(("preprocess", "inference", "postprocess"), self.config.metrics_ports, strict=True))[stage]
        return f"http://127.0.0.1:{port}/metrics"

    def submit(
        self, data: bytes, content_type: str = "image/png", wait: float = 0, **headers: str
    ) -> requests.Response:
        if wait:
            headers["Prefer"] = f"wait={wait:g}"
        return self.session.post(
            f"{self.base_url}/v1/jobs", data=data, headers={"Content-Type": content_type, **headers}, timeout=60
        )

    def job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        url = f"{self.base_url}/v1/jobs/{job_id}" + (f"?wait={wait:g}" if wait else "")
        response = self.session.get(url, timeout=wait + 30)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def log_events(self, service: str) -> list[dict[str, Any]]:
        path = self.log_dir / f"{service}.log"
        events = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def wait_ready(self, timeout_s: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.supervisor.poll()
            try:
                response = self.session.get(f"{self.base_url}/readyz", timeout=2)
                body = response.json()
                if response.status_code == 200:
                    return body
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"stack not ready after {timeout_s} s: {body}; logs in {self.log_dir}")

    def close(self) -> None:
        self.session.close()
        self.supervisor.close()


def start_stack(
    redis_url: str,
    var_dir: Path,
    env: Mapping[str, str] | None = None,
    workers: Mapping[str, int] | None = None,
    extra_specs: Callable[[StackConfig], list[ServiceSpec]] | None = None,
    monitoring: bool = False,
    solo: frozenset[str] = SOLO_STAGES,
) -> Stack:
    """Start the stack ``make run`` starts (gateway, workers, registry service; with
    ``monitoring``, the monitor worker, its beat and the training worker too), plus any
    ``extra_specs(config)`` (e.g. an inference worker on a model's own queue)."""
    config = StackConfig(
        var_dir=var_dir,
        redis_url=redis_url,
        gateway_port=free_port(),
        metrics_ports=(free_port(), free_port(), free_port()),
        workers=workers or {"preprocess": 1, "inference": 1, "postprocess": 1},
        flower=False,
        monitoring=monitoring,
        monitor_metrics_port=free_port() if monitoring else 0,
        solo=solo,
        env={"HEARTBEAT_INTERVAL_S": "0.5", "HEARTBEAT_TTL_S": "3", **(env or {})},
    )
    specs = build_specs(config) + (extra_specs(config) if extra_specs else [])
    supervisor = Supervisor(specs, var_dir / "log")
    supervisor.start_all()
    stack = Stack(supervisor, f"http://127.0.0.1:{config.gateway_port}", config)
    try:
        stack.wait_ready()
    except AssertionError:
        stack.close()
        raise
    return stack
