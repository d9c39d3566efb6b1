"""Thin Celery task of the training service: ``training.retrain``.

The outcome is appended to the model's retraining history in Redis, and the retrain lock the
monitor took is released whatever happens (``training_worker.retrain.run_retrain``). A new
version is promoted through the registry service, by task name, like every other promotion.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from digitflow.registry_client import RegistryClient
from digitflow.tasks import REGISTRY_PROMOTE, REGISTRY_SYNC, TRAINING_RETRAIN
from training_worker.retrain import Promote, run_retrain
from training_worker.settings import TrainingSettings


def registry_service(app: Celery, settings: TrainingSettings) -> tuple[Promote, Any]:
    """(promote, refresh the view of a model), both asking the registry service."""
    client = RegistryClient(app, settings.redis_url, settings.heartbeat_ttl_s)
    timeout_s = settings.deploy_timeout_s * 2 + 30

    def promote(model: str, version: str) -> dict[str, Any]:
        payload = {"name": model, "version": version, "alias": "production"}
        return client.call(REGISTRY_PROMOTE, payload, timeout_s=timeout_s)

    def registered(model: str) -> None:
        client.call(REGISTRY_SYNC, {"names": [model]}, timeout_s=timeout_s)

    return promote, registered


def register_tasks(app: Celery, settings: TrainingSettings) -> None:
    promote, registered = registry_service(app, settings)

    @app.task(name=TRAINING_RETRAIN, acks_late=False)
    def retrain_task(payload: dict[str, Any]) -> dict[str, Any] | None:
        token = payload.get("token")
        return run_retrain(
            str(payload["model"]),
            str(payload.get("trigger", "manual")),
            settings,
            promote,
            registered,
            token=str(token) if token else None,
        )
