"""What every stage worker does around its tasks: logging, heartbeat, the keeper of its
deliveries (digitflow/deliveries.py), metrics endpoint.

Each service's ``worker.py`` calls :func:`prepare_process` first (before prometheus_client is
imported, which reads ``PROMETHEUS_MULTIPROC_DIR`` once) and then :func:`create_worker_app`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery, Task, signals

from digitflow import tracing
from digitflow.celery_app import describe_batch, make_celery
from digitflow.jobs import JobStore
from digitflow.messages import Batch
from digitflow.settings import WorkerSettings
from digitflow.tasks import TASK_OF_STAGE


def prepare_process(service: str, var_dir: Path) -> None:
    """Point prometheus_client at a per-service directory unless the launcher already did (then
    make sure it exists: an image's ENV names a folder nothing created).

    Runs in the worker's main process, before the pool forks, so clearing it is safe.
    """
    preset = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if preset:
        Path(preset).mkdir(parents=True, exist_ok=True)
        return
    import shutil

    path = var_dir / "prom" / f"{service}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def create_worker_app(service: str, stage: str, settings: WorkerSettings) -> Celery:
    from digitflow.heartbeat import Heartbeat
    from digitflow.observability import setup_logging
    from digitflow.redis_client import connect
    from digitflow.stage import set_fault_hold

    app = make_celery(service, settings)
    state: dict[str, Any] = {}
    tracing.configure(service)
    set_fault_hold(settings.fault_hold_s)

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        # Logs go to stdout: containers collect it, `make run` sends it to var/log/<service>.log.
        setup_logging(service, settings.log_level, settings.log_format)

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        name = getattr(sender, "hostname", None) or f"{stage}@{socket.gethostname()}:{os.getpid()}"
        processes = int(getattr(getattr(sender, "controller", None), "concurrency", 1) or 1)
        beat = Heartbeat(connect(settings.redis_url), stage, name, settings.heartbeat_interval_s, processes)
        beat.start()
        state["heartbeat"] = beat
        state["keeper"] = _start_keeper(app, service, settings)
        if settings.metrics_port:
            from prometheus_client import CollectorRegistry, multiprocess, start_http_server

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            start_http_server(settings.metrics_port, addr="0.0.0.0", registry=registry)

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        for key in ("heartbeat", "keeper"):
            running = state.pop(key, None)
            if running is not None:
                running.stop()
        tracing.flush()  # the solo pool records spans in this process

    @signals.worker_process_shutdown.connect(weak=False)
    def _flush_spans(**_: Any) -> None:
        # A pool child leaves with os._exit (no atexit): export its spans before it goes.
        tracing.flush()

    task_name = TASK_OF_STAGE.get(stage)

    def fail_batch(batch: Any, exc: BaseException) -> None:
        from digitflow.stage_failures import fail_batch_after_task_error

        if "store" not in state:
            state["store"] = ProcessResources(settings).store
        fail_batch_after_task_error(stage, state["store"], batch, exc)

    if task_name is not None:
        _solo_time_limits(task_name, settings, fail_batch)

    @signals.task_failure.connect(weak=False)
    @signals.task_internal_error.connect(weak=False)
    def _task_error(sender: Any = None, args: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        # A stage task that ended in an exception (hard time limit: sent in the main process,
        # Redis refused the next message: in the pool child) would leave its jobs unfinished.
        if task_name is None or getattr(sender, "name", None) != task_name or not args or exception is None:
            return
        fail_batch(args[0], exception)

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_gone(pid: int | None = None, **_: Any) -> None:
        if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)

    return app


def _start_keeper(app: Celery, service: str, settings: WorkerSettings) -> Any:
    """Beat for this worker's deliveries and hand dead workers' on (in the main process: the
    one that consumes and acknowledges, whatever the pool)."""
    from digitflow.broker import restore_owned
    from digitflow.deliveries import DeliveryKeeper

    connection: dict[str, Any] = {}

    def restore(tags: Any) -> int:
        if "conn" not in connection:  # the keeper's thread only
            connection["conn"] = app.connection_for_write()
        return restore_owned(connection["conn"], tags)

    keeper = DeliveryKeeper(settings.redis_url, settings.delivery_lease_s, restore, service)
    keeper.start()
    return keeper


def _solo_time_limits(
    task_name: str, settings: WorkerSettings, fail_batch: Callable[[Any, BaseException], None]
) -> None:
    """Enforce the stage task's time limits when the worker runs the solo pool (solo_limits.py)."""
    from digitflow.solo_limits import SoloLimits, is_solo

    limits = SoloLimits(task_name, settings.soft_time_limit_s, settings.hard_time_limit_s, fail_batch)
    messages: dict[str, Any] = {}  # task id -> its kombu message, from receipt to the task's end

    @signals.worker_ready.connect(weak=False)
    def _enable(sender: Any = None, **_: Any) -> None:
        if is_solo(getattr(sender, "pool", None)):
            limits.enable()

    @signals.task_received.connect(weak=False)
    def _received(request: Any = None, **_: Any) -> None:
        if limits.enabled and request is not None and request.name == task_name:
            messages[request.id] = request.message

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
        message = messages.get(task_id)
        limits.started(getattr(task, "name", ""), task_id, args, message.ack if message is not None else None)

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id: str = "", **_: Any) -> None:
        messages.pop(task_id, None)
        limits.finished(task_id)


class ProcessResources:
    """Per-process handles (Redis, job store), created on first use: after the pool forks."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._store: JobStore | None = None

    @property
    def store(self) -> JobStore:
        if self._store is None:
            from digitflow.redis_client import connect

            self._store = JobStore(connect(self.settings.redis_url), self.settings.job_ttl_s)
        return self._store


def forward(task: Task, batch: Batch) -> Batch:
    """Return ``batch`` as the chain's next message, or end the chain when no job is left."""
    chain = task.request.chain
    if not batch["items"]:
        task.request.chain = None
    elif chain and isinstance(chain[-1], dict):
        # The next step's arguments as Flower shows them, so Celery need not saferepr the batch.
        chain[-1].setdefault("options", {})["argsrepr"] = describe_batch(batch)
    return batch
