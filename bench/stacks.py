"""Starting and stopping what a scenario measures, with the project's own supervisor.

``digitflow_stack`` starts a private redis-server on a free port (never the machine's Redis),
then the gateway and the three stage workers exactly as ``make run`` builds them;
``monolith_stack`` starts the baseline under gunicorn and ``bentoml_stack`` the peer framework
(``bench.bentoml_service``) from its own venv. Each waits until the service answers (``/readyz``
200, or ``/healthz`` for the monolith) and stops every process on the way out, also on errors
and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.monolith import monolith_spec
from bench.paths import CHECKOUT
from digitflow_cli.supervisor import ServiceSpec, StackConfig, Supervisor, build_specs, free_port, redis_spec

# Per-stage pool sizes of the digitflow scenarios (what ``make run`` starts by default).
WORKERS = {"preprocess": 2, "inference": 1, "postprocess": 1}


BATCH_SIZE_RE = re.compile(
    r'^digitflow_batch_size_(?P<kind>sum|count)\{[^}]*stage="(?P<stage>[^"]+)"[^}]*\}\s+(?P<value>\S+)', re.MULTILINE
)
# BentoML's adaptive batcher: requests merged per call of the batchable API, one series per worker.
BENTOML_BATCH_RE = re.compile(
    r"^bentoml_service_adaptive_batch_size_(?P<kind>sum|count)\{[^}]*\}\s+(?P<value>\S+)", re.MULTILINE
)


@dataclass
class Stack:
    """A running system: its base URL, its services (name -> root pid), where they log and
    where their Prometheus metrics are served."""

    url: str
    services: dict[str, int]
    log_dir: Path
    supervisor: Supervisor
    metrics_urls: list[str] = field(default_factory=list)
    # The batch-size histogram's series; one without a ``stage`` group is summed as ``default_stage``.
    batch_re: re.Pattern[str] = BATCH_SIZE_RE
    default_stage: str = "-"

    def batch_counters(self) -> dict[str, tuple[float, float]]:
        """Per stage label, the (sum, count) of the batch-size histogram over all metrics
        endpoints (digitflow: jobs per batch message); endpoints that do not answer are skipped."""
        out: dict[str, tuple[float, float]] = {}
        for url in self.metrics_urls:
            try:
                text = _get_text(url)
            except OSError:
                continue
            for match in self.batch_re.finditer(text):
                stage, kind, value = match.groupdict().get("stage") or self.default_stage, match["kind"], match["value"]
                total, count = out.get(stage, (0.0, 0.0))
                out[stage] = (total + float(value), count) if kind == "sum" else (total, count + float(value))
        return out

    def dead(self) -> list[str]:
        """Services whose root process has exited (a benchmark of a crashed stack is void)."""
        return [name for name, run in self.supervisor.running.items() if run.proc.poll() is not None]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _get_text(url: str) -> str:
    return _get(url)[1].decode(errors="replace")


def get_json(url: str, path: str, timeout: float = 2.0) -> tuple[int, object]:
    status, body = _get(url + path, timeout)
    return status, json.loads(body) if body else None


def wait_ready(stack: Stack, path: str, timeout_s: float) -> None:
    """Poll ``path`` until it answers 200. Raises RuntimeError naming the last answer and logs."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        stack.supervisor.poll()
        try:
            status, body = _get(stack.url + path)
            if status == 200:  # the status alone: BentoML's /readyz body is not JSON
                return
            last = f"{status} {body[:200].decode(errors='replace')}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise RuntimeError(
        f"{stack.url}{path} not ready after {timeout_s:.0f} s (last answer: {last}); logs in {stack.log_dir}"
    )


@contextmanager
def digitflow_stack(
    var_dir: Path, env: Mapping[str, str], ready_timeout_s: float = 90.0, full: bool = False
) -> Iterator[Stack]:
    """Redis + gateway + preprocess/inference/postprocess workers; ``env`` reaches every service.

    ``full``: everything ``make run`` (``digitflow run``) starts besides, the registry service
    (after the same first-start bootstrap), the monitor, its beat, the training worker and Flower.
    """
    port, gateway_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    metrics_ports = (free_port(), free_port(), free_port())
    config = StackConfig(
        var_dir=var_dir,
        redis_url=redis_url,
        gateway_port=gateway_port,
        metrics_ports=metrics_ports,
        workers=WORKERS,
        flower=full,
        flower_port=free_port(),
        env=dict(env),
        registry=full,  # the model registry is not on a job's path: measured only as make run has it
        monitoring=full,
    )
    if full:
        _bootstrap_registry(config)
    specs = [redis_spec(var_dir, port), *build_specs(config)]
    supervisor = Supervisor(specs, var_dir / "log", restart=False)
    try:
        supervisor.start_all(redis_url)
        services = {name: run.proc.pid for name, run in supervisor.running.items()}
        url = f"http://127.0.0.1:{gateway_port}"
        metrics = [f"{url}/metrics", *(f"http://127.0.0.1:{p}/metrics" for p in metrics_ports)]
        stack = Stack(url, services, var_dir / "log", supervisor, metrics)
        wait_ready(stack, "/readyz", ready_timeout_s)
        yield stack
    finally:
        supervisor.close()


@contextmanager
def monolith_stack(var_dir: Path, workers: int, threads: int, ready_timeout_s: float = 60.0) -> Iterator[Stack]:
    """The monolith under gunicorn: ``workers`` processes of ``threads`` threads."""
    port = free_port()
    supervisor = Supervisor([monolith_spec(port, workers, threads)], var_dir / "log", restart=False)
    try:
        supervisor.start_all()
        services = {name: run.proc.pid for name, run in supervisor.running.items()}
        stack = Stack(f"http://127.0.0.1:{port}", services, var_dir / "log", supervisor)
        wait_ready(stack, "/healthz", ready_timeout_s)
        yield stack
    finally:
        supervisor.close()


def _bootstrap_registry(config: StackConfig) -> None:
    """What ``digitflow run`` does before starting: register the shipped models (its messages
    go to stderr, stdout is the report)."""
    from digitflow_cli.main import bootstrap_registry

    with contextlib.redirect_stdout(sys.stderr):
        bootstrap_registry(config)


def bentoml_spec(python: Path, port: int, max_latency_ms: int, home: Path) -> ServiceSpec:
    """``bentoml serve`` of the peer from its venv, one torch thread per worker (as the monolith).

    ``home`` is its BENTOML_HOME (its Prometheus files, upload temp files), the run's own
    directory rather than ``~/bentoml``, so no run sees another's files."""
    argv = [str(python.parent / "bentoml"), "serve", "bench.bentoml_service:Digits", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--working-dir", str(CHECKOUT)]
    env = {"OMP_NUM_THREADS": "1", "BENTOML_MAX_LATENCY_MS": str(max_latency_ms), "BENTOML_DO_NOT_TRACK": "True"}
    return ServiceSpec("bentoml", argv, {**env, "BENTOML_HOME": str(home)})


@contextmanager
def bentoml_stack(var_dir: Path, python: Path, max_latency_ms: int, ready_timeout_s: float = 90.0) -> Iterator[Stack]:
    """The peer under ``bentoml serve`` (its workers and adaptive batching, bench.bentoml_service)."""
    port = free_port()
    spec = bentoml_spec(python, port, max_latency_ms, var_dir / "bentoml-home")
    supervisor = Supervisor([spec], var_dir / "log", restart=False)
    try:
        supervisor.start_all()
        services = {name: run.proc.pid for name, run in supervisor.running.items()}
        url = f"http://127.0.0.1:{port}"
        stack = Stack(url, services, var_dir / "log", supervisor, [f"{url}/metrics"], BENTOML_BATCH_RE, "bentoml")
        wait_ready(stack, "/readyz", ready_timeout_s)
        yield stack
    finally:
        supervisor.close()
