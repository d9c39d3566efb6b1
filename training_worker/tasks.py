"""Thin Celery task of the training service: ``training.retrain``.

The outcome is appended to the model's retraining history in Redis, and the retrain lock the
monitor took is released whatever happens (``training_worker.retrain.run_retrain``). A new
version that passes the gate is made the candidate through the registry service, by task name
(``registry.candidate`` with CANARY_MODE / CANARY_SHARE and its suite results).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from digitflow.registry_client import RegistryClient
from digitflow.tasks import REGISTRY_CANDIDATE, REGISTRY_SYNC, TRAINING_RETRAIN
from training_worker.retrain import Release, run_retrain
from training_worker.settings import TrainingSettings


def registry_service(app: Celery, settings: TrainingSettings) -> tuple[Release, Any]:
    """(make a version the candidate, refresh the view of a model), both asking the registry service."""
    client = RegistryClient(app, settings.redis_url, settings.heartbeat_ttl_s)
    timeout_s = settings.deploy_timeout_s * 2 + 30

    def release(model: str, version: str, suites: dict[str, Any]) -> dict[str, Any]:
        payload = {
            "name": model,
            "version": version,
            "mode": settings.canary_mode,
            "share": settings.canary_share,
            "suites": suites,
            "by": "retrain",
        }
        return client.call(REGISTRY_CANDIDATE, payload, timeout_s=timeout_s)

    def registered(model: str) -> None:
        client.call(REGISTRY_SYNC, {"names": [model]}, timeout_s=timeout_s)

    return release, registered


def register_tasks(app: Celery, settings: TrainingSettings) -> None:
    release, registered = registry_service(app, settings)

    @app.task(name=TRAINING_RETRAIN, acks_late=False)
    def retrain_task(payload: dict[str, Any]) -> dict[str, Any] | None:
        token = payload.get("token")
        return run_retrain(
            str(payload["model"]),
            str(payload.get("trigger", "manual")),
            settings,
            release,
            registered,
            token=str(token) if token else None,
        )
