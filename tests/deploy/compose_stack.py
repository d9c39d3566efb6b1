"""compose.yaml as shipped, brought up on the engine, and what the tests ask of it.

The stack is the file itself: the tests pass only what its `${...}` variables ask for (secrets,
host ports, the image tag), and read the system from outside as a user would: the gateway's and
Flower's published ports, Prometheus' and the trace receiver's APIs on 127.0.0.1, and
``podman exec`` into a container where a port is not published (Redis has none, by design).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from digitflow_cli.supervisor import free_port
from tests.deploy.engine import ROOT, Engine
from tests.deploy.load import photos

# The core stack: everything in compose.yaml but the `dashboards` profile (Grafana).
SERVICES = (
    "redis",
    "postgres",
    "mlflow",
    "gateway",
    "preprocess_worker",
    "inference_worker",
    "postprocess_worker",
    "registry_worker",
    "monitor_worker",
    "monitor_beat",
    "training_worker",
    "flower",
    "prometheus",
    "jaeger",
)


@dataclass
class ComposeStack:
    engine: Engine
    project: str
    env: dict[str, str] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    @classmethod
    def create(cls, engine: Engine, project: str) -> ComposeStack:
        env = {
            "REDIS_PASSWORD": secrets.token_hex(12),
            "POSTGRES_PASSWORD": secrets.token_hex(12),
            "FLOWER_USER": "admin",
            "FLOWER_PASSWORD": secrets.token_hex(12),
            "GRAFANA_PASSWORD": secrets.token_hex(12),
            "ADMIN_TOKEN": secrets.token_hex(16),
            "GATEWAY_PORT": str(free_port()),
            "FLOWER_PORT": str(free_port()),
            "PROMETHEUS_PORT": str(free_port()),
            "JAEGER_UI_PORT": str(free_port()),
        }
        return cls(engine, project, env)

    # --- compose and podman ------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 900, check: bool = True, override: Path | None = None) -> str:
        """docker-compose on compose.yaml (and an override file the caller wrote, if any)."""
        files = ["-f", str(ROOT / "compose.yaml")] + (["-f", str(override)] if override else [])
        argv = ["docker-compose", "-p", self.project, *files, *args]
        result = subprocess.run(
            argv, env={**self.engine.env, **self.env}, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result.stdout + result.stderr

    def containers(self, service: str, running: bool = True) -> list[str]:
        """The service's containers (one per replica), by compose's labels, oldest first."""
        argv = ["ps", "-a", "--format", "{{.Names}}", "--sort", "created"]
        argv += ["--filter", f"label=com.docker.compose.project={self.project}"]
        argv += ["--filter", f"label=com.docker.compose.service={service}"]
        if running:
            argv += ["--filter", "status=running"]
        return self.engine.podman(*argv).split()

    def container(self, service: str) -> str:
        found = self.containers(service)
        assert found, f"no running container of {service}"
        return found[0]

    def exec(self, service: str, script: str, timeout: float = 60) -> str:
        """A shell command inside the service's first container (its own environment)."""
        return self.engine.podman("exec", self.container(service), "sh", "-c", script, timeout=timeout)

    def popen(self, service: str, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["podman", "exec", self.container(service), "sh", "-c", " ".join(argv)],
            env=self.engine.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def metric(self, container: str, name: str, labels: str, port: int = 9100) -> float:
        """One sample of a container's own /metrics, read inside it (0 when absent)."""
        script = (
            'python -c "import urllib.request; '
            f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\""
        )
        text = self.engine.podman("exec", container, "sh", "-c", script)
        found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def logged_predictions(self) -> int:
        """Rows in the prediction log (PostgreSQL's container); 0 while it has no table yet."""
        count = "psql -U digitflow -d digitflow -tAc 'select count(*) from predictions' 2>/dev/null || echo 0"
        return int(self.exec("postgres", count).strip() or 0)

    def network(self) -> str:
        return f"{self.project}_default"

    def logs(self, container: str, tail: int = 200) -> str:
        return self.engine.podman("logs", "--tail", str(tail), container, check=False)

    # --- what a user sees --------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['GATEWAY_PORT']}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.env['FLOWER_PORT']}"

    @property
    def flower_auth(self) -> tuple[str, str]:
        return self.env["FLOWER_USER"], self.env["FLOWER_PASSWORD"]

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        response = self.session.get(
            f"http://127.0.0.1:{self.env['PROMETHEUS_PORT']}/api/v1/query", params={"query": query}, timeout=30
        )
        response.raise_for_status()
        return response.json()["data"]["result"]  # type: ignore[no-any-return]

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.env['JAEGER_UI_PORT']}/api/traces/{trace_id}"
        response = self.session.get(url, timeout=30)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()["data"][0]  # type: ignore[no-any-return]

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            response = self.session.get(f"{self.base_url}/readyz", timeout=10)
        except requests.RequestException as exc:
            return 0, {"error": str(exc)}
        return response.status_code, response.json() if response.content else {}

    def models(self) -> dict[str, Any]:
        response = self.session.get(f"{self.base_url}/v1/models", timeout=30)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def submit(self, data: bytes, wait: float = 0, headers: Mapping[str, str] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if wait:
            sent["Prefer"] = f"wait={wait:g}"
        files = {"image": ("d.jpg", data, "image/jpeg")}
        return self.session.post(f"{self.base_url}/v1/jobs", files=files, headers=sent, timeout=wait + 30)

    def wait_ready(self, timeout_s: float = 300) -> None:
        """Until the gateway says ready (Redis answers, every stage has a live worker), the
        registry has published a production version of `digits`, and a job succeeds."""
        deadline = time.monotonic() + timeout_s
        status, body = 0, {}
        while time.monotonic() < deadline:
            status, body = self.readyz()
            if status == 200 and self._serving() and self._warm():
                return
            time.sleep(2)
        states = self.engine.podman("ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}")
        raise AssertionError(f"stack not ready after {timeout_s:.0f} s: {status} {json.dumps(body)}\n{states}")

    def _warm(self) -> bool:
        """One job through the chain: each stage loads what it serves with (the model, lazily)
        on its first job, which takes seconds on a busy machine; the tests time what follows."""
        try:
            answer = self.submit(photos(1, seed=99)[0][0], wait=60)
        except requests.RequestException:
            return False
        return answer.status_code == 200 and answer.json().get("status") == "succeeded"

    def _serving(self) -> bool:
        try:
            return any(m.get("name") == "digits" and m.get("production") for m in self.models().get("models", []))
        except (requests.RequestException, ValueError):
            return False

    def remove(self) -> None:
        """``compose down -v``, then whatever a restarting container kept it from removing."""
        self.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
        label = f"label=com.docker.compose.project={self.project}"
        left = self.engine.podman("ps", "-aq", "--filter", label, check=False).split()
        if left:
            self.engine.podman("rm", "-f", *left, check=False)
        for kind in ("network", "volume"):
            names = self.engine.podman(kind, "ls", "-q", "--filter", label, check=False).split()
            if names:
                self.engine.podman(kind, "rm", "-f", *names, check=False)

    def dump_logs(self, out: Path) -> None:
        """Every container's log into ``out`` (kept for a failed run: tests/artifacts is ignored)."""
        out.mkdir(parents=True, exist_ok=True)
        names = self.engine.podman(
            "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=com.docker.compose.project={self.project}"
        ).split()
        for name in names:
            (out / f"{name}.log").write_text(self.logs(name, tail=2000))
