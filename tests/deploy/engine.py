"""The container engine the deployment suite drives: podman, with compose files run by
docker-compose 1.29 over podman's Docker-compatible API socket.

Why docker-compose and not podman-compose: docker-compose implements what compose.yaml relies
on (``depends_on`` with ``condition: service_healthy``, ``--scale``, profiles, the ``<<`` merge
keys, one network alias per service with one DNS record per replica), and talks to the engine
through the same API a Docker host serves; podman-compose 1.0.3 ignores health conditions and
starts replicas by hand.

Two things this machine kind lacks are supplied here, and nothing else is changed:
- podman reads deploy/offline/containers.conf (CONTAINERS_CONF): the open-file and process
  limits this kernel allows, and runc instead of crun (see that file);
- no systemd runs, and podman schedules health checks with systemd timers, so a thread runs
  ``podman healthcheck run`` for every container with a health check every few seconds: the
  same check, on the schedule systemd would keep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "offline" / "containers.conf"


def engine_problem() -> str | None:
    """Why the suite cannot run here (None when it can)."""
    for tool in ("podman", "docker-compose", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (`make system-deps` installs it where apt-get can)"
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    probe = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], env=env, capture_output=True)
    if probe.returncode != 0:
        return f"podman does not work here: {probe.stderr.decode(errors='replace').strip()[:300]}"
    return None


class Engine:
    """podman's API service on a private socket, its health-check ticker, and both CLIs."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.socket = work_dir / "podman.sock"
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        self._log = (work_dir / "podman-service.log").open("wb")
        self._service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline or self._service.poll() is not None:
                raise RuntimeError(f"podman system service did not start: see {self._log.name}")
            time.sleep(0.1)
        self.env["DOCKER_HOST"] = f"unix://{self.socket}"
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._health_checks, name="podman-healthchecks", daemon=True)
        self._ticker.start()

    def podman(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def run_script(self, script: Path, *args: str) -> str:
        result = subprocess.run(
            ["bash", str(script), *args], env=self.env, capture_output=True, text=True, timeout=3000
        )
        if result.returncode != 0:
            raise RuntimeError(f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def inspect(self, names: Sequence[str]) -> list[dict[str, object]]:
        if not names:
            return []
        found: list[dict[str, object]] = json.loads(self.podman("inspect", *names, check=False) or "[]")
        return found

    def _health_checks(self) -> None:
        """Each container's check on its own interval, as systemd's timer would run it."""
        due: dict[str, float] = {}
        while not self._stop.wait(1.0):
            ids = self.podman("ps", "-q", "--no-trunc", "--filter", "status=running", check=False, timeout=60).split()
            now = time.monotonic()
            for info in self.inspect([i for i in ids if due.get(i, 0.0) <= now]):
                config = info.get("Config") or {}
                check = config.get("Healthcheck") if isinstance(config, dict) else None
                cid = str(info["Id"])
                if not check:
                    due[cid] = float("inf")
                    continue
                interval_s = (check.get("Interval") or 30_000_000_000) / 1e9
                if cid in due:  # the first check waits one interval, as Docker's does
                    subprocess.run(["podman", "healthcheck", "run", cid], env=self.env, capture_output=True, timeout=60)
                due[cid] = now + min(interval_s, 5.0)

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(30)
        self._service.terminate()
        try:
            self._service.wait(30)
        except subprocess.TimeoutExpired:
            self._service.kill()
        self._log.close()
