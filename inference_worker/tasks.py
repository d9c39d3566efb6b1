"""Thin Celery task of the inference stage."""

from __future__ import annotations

from celery import Celery, Task

from digitflow.messages import Batch
from digitflow.settings import InferenceSettings
from digitflow.stage import run_stage
from digitflow.tasks import INFERENCE
from digitflow.worker_runtime import ProcessResources, forward
from inference_worker.serving import ModelCache, infer_items


def register_tasks(app: Celery, settings: InferenceSettings) -> None:
    resources = ProcessResources(settings)
    models = ModelCache(settings)  # empty until the first batch, i.e. after the pool forks

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
