"""Thin Celery task of the inference stage, plus the deploy watcher of each pool process."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, signals

from digitflow.messages import Batch
from digitflow.settings import InferenceSettings
from digitflow.stage import run_stage
from digitflow.tasks import INFERENCE
from digitflow.worker_runtime import ProcessResources, forward
from inference_worker.deploy_watcher import DeployWatcher
from inference_worker.serving import ModelCache, infer_items


def register_tasks(app: Celery, settings: InferenceSettings) -> None:
    resources = ProcessResources(settings)
    models = ModelCache(settings)  # empty until the first batch, i.e. after the pool forks
    state: dict[str, DeployWatcher] = {}

    def start_watcher() -> None:
        # In the process that serves jobs (a pool child, or the worker itself with --pool solo).
        if "watcher" not in state:
            state["watcher"] = DeployWatcher(models, settings)
            state["watcher"].start()

    @signals.worker_process_init.connect(weak=False)
    def _child_started(**_: Any) -> None:
        start_watcher()

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        pool = getattr(sender, "pool", None)
        if pool is not None and type(pool).__module__.endswith(".solo"):
            start_watcher()

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_stopping(**_: Any) -> None:
        watcher = state.pop("watcher", None)
        if watcher is not None:
            watcher.stop()

    @app.task(name=INFERENCE, bind=True)
    def run(self: Task, batch: Batch) -> Batch:
        return forward(
            self,
            run_stage(
                "inference",
                batch,
                resources.store,
                lambda items: infer_items(items, models),
                ("pixels",),
                max_strikes=settings.max_strikes,
            ),
        )
