"""Thin Celery task of the postprocess stage: the last link, which records the result."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from digitflow.messages import Batch, Item
from digitflow.settings import WorkerSettings
from digitflow.stage import run_stage
from digitflow.tasks import POSTPROCESS
from digitflow.worker_runtime import ProcessResources, forward
from postprocess_worker.predictions import PredictionWriter
from postprocess_worker.steps import postprocess_items


def register_tasks(app: Celery, settings: WorkerSettings) -> None:
    resources = ProcessResources(settings)
    writer = PredictionWriter(settings)

    def step(items: list[Item]) -> list[dict[str, Any]]:
        results = postprocess_items(items, policy=settings.outlier_policy)
        writer.write(items, results)  # one transaction per batch; never fails the jobs
        return results

    @app.task(name=POSTPROCESS, bind=True)
    def run(self: Task, batch: Batch) -> Batch:
        return forward(
            self,
            run_stage(
                "postprocess",
                batch,
                resources.store,
                step,
                ("logits",),
                terminal=True,
                max_strikes=settings.max_strikes,
            ),
        )
