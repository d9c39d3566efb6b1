"""Thin Celery task of the postprocess stage: the last link, which records the result."""

from __future__ import annotations

from celery import Celery, Task

from digitflow.messages import Batch
from digitflow.settings import WorkerSettings
from digitflow.stage import run_stage
from digitflow.tasks import POSTPROCESS
from digitflow.worker_runtime import ProcessResources, forward
from postprocess_worker.steps import postprocess_items


def register_tasks(app: Celery, settings: WorkerSettings) -> None:
    resources = ProcessResources(settings)

    @app.task(name=POSTPROCESS, bind=True)
    def run(self: Task, batch: Batch) -> Batch:
        return forward(
            self,
            run_stage(
                "postprocess",
                batch,
                resources.store,
                postprocess_items,
                ("logits",),
                terminal=True,
                max_strikes=settings.max_strikes,
            ),
        )
