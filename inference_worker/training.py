"""The training worker: ``celery -A inference_worker.training:app worker -Q training --pool solo``.

Runs ``training.retrain`` (sent by the monitor on a drift or accuracy alert) one at a time, in
the inference image (torch + MLflow). The outcome is appended to the model's retraining history
in Redis, and the retrain lock the monitor took is released whatever happens.
"""

from __future__ import annotations

from typing import Any

from digitflow.settings import MonitorSettings
from digitflow.tasks import TRAINING_QUEUE, TRAINING_RETRAIN
from digitflow.worker_runtime import create_worker_app, prepare_process
from inference_worker.retrain import run_retrain  # torch loads at start, not on the first retrain

settings = MonitorSettings.from_env()
prepare_process("training", settings.var_dir)
app = create_worker_app("training", TRAINING_QUEUE, settings)


@app.task(name=TRAINING_RETRAIN, acks_late=False)
def retrain_task(payload: dict[str, Any]) -> dict[str, Any] | None:
    token = payload.get("token")
    return run_retrain(
        str(payload["model"]), str(payload.get("trigger", "manual")), settings, token=str(token) if token else None
    )
