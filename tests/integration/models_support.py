"""Helpers shared by the model-lifecycle integration tests (real stack, real MLflow on SQLite)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests
from PIL import Image

from digitflow.celery_app import make_celery
from digitflow.deploy_protocol import SERVERS
from digitflow.heartbeat import live_workers
from digitflow.model_store import RegistryStore
from digitflow.model_view import read_entry
from digitflow.registry_client import RegistryClient
from digitflow.settings import CoreSettings
from digitflow.tasks import REGISTRY_SYNC
from tests.conftest import wait_until
from tests.stacks import Stack

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token-7f3a9c"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def store_of(stack: Stack) -> RegistryStore:
    return RegistryStore(stack.config.tracking_uri, stack.config.var_dir / "mlflow" / "artifacts")


def sync_view(stack: Stack, name: str) -> None:
    """Ask the running registry service to rewrite the view of ``name`` (after registering)."""
    settings = CoreSettings(redis_url=stack.config.redis_url)
    client = RegistryClient(make_celery("test", settings), stack.config.redis_url, 3.0)
    client.call(REGISTRY_SYNC, {"names": [name]}, timeout_s=30)


def wait_for_registry(stack: Stack, names: tuple[str, ...], servers: int) -> None:
    """The registry service bootstrapped the shipped models and ``servers`` inference processes beat."""
    client = redis.Redis.from_url(stack.config.redis_url)
    wait_until(lambda: all(read_entry(client, n) for n in names), 120, 0.3, what=f"the registry view of {names}")
    wait_until(
        lambda: len(live_workers(client, 3.0, [SERVERS])[SERVERS]) >= servers, 60, 0.3, what="inference deploy watchers"
    )


def production(stack: Stack, name: str) -> str | None:
    entry = read_entry(redis.Redis.from_url(stack.config.redis_url), name)
    return None if entry is None else entry["aliases"].get("production")


def cli(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REDIS_URL": stack.config.redis_url,
        "VAR_DIR": str(stack.config.var_dir),
        "MLFLOW_TRACKING_URI": stack.config.tracking_uri,
        "HEARTBEAT_TTL_S": "3",
        "HEARTBEAT_INTERVAL_S": "0.5",
    }
    argv = [sys.executable, "-m", "digitflow_cli.main", *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def submit(stack: Stack, data: bytes, model: str, wait: float = 15, ctype: str = "image/jpeg") -> dict[str, Any]:
    response = stack.session.post(
        f"{stack.base_url}/v1/jobs?model={model}",
        data=data,
        headers={"Content-Type": ctype, "Prefer": f"wait={wait:g}"},
        timeout=wait + 30,
    )
    body: dict[str, Any] = response.json()
    if response.status_code == 202:
        body = stack.job(body["job_id"], wait=wait)
    return body


def fashion_photo(image28: np.ndarray, size: int = 168) -> bytes:
    """A Fashion-MNIST image as a product photo: dark object on a white background, PNG."""
    big = Image.fromarray(image28).resize((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    Image.fromarray(255 - np.asarray(big)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Stream:
    """Closed-loop clients keeping ``inflight`` jobs in flight until stopped; records every job."""

    stack: Stack
    images: list[bytes]
    model: str = "digits"
    inflight: int = 4
    jobs: list[tuple[float, float, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, k: int) -> None:
        session, i = requests.Session(), k
        while not self._stop.is_set():
            sent = time.time()
            try:
                job = submit_with(session, self.stack, self.images[i % len(self.images)], self.model)
                self.jobs.append((sent, time.time(), job))
            except (requests.RequestException, ValueError) as exc:
                self.errors.append(repr(exc))
            i += self.inflight

    def __enter__(self) -> Stream:
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(self.inflight)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def submit_with(session: requests.Session, stack: Stack, data: bytes, model: str) -> dict[str, Any]:
    response = session.post(
        f"{stack.base_url}/v1/jobs?model={model}",
        data=data,
        headers={"Content-Type": "image/jpeg", "Prefer": "wait=20"},
        timeout=60,
    )
    body: dict[str, Any] = response.json()
    if response.status_code not in (200, 202):
        return {"status": "http_error", "error": body, "model": {}}
    if body.get("status") not in ("succeeded", "failed"):
        body = session.get(f"{stack.base_url}/v1/jobs/{body['job_id']}?wait=20", timeout=60).json()
    return body


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        pairs = dict(p.split("=", 1) for p in head[head.index("{") + 1 : -1].split(","))
        if all(pairs.get(k, "").strip('"') == v for k, v in labels.items()):
            total += float(value)
    return total


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
