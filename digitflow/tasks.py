"""Task names, queue names and routes: the one table every service reads.

Services never import each other; they agree on these strings. The gateway starts a chain
``preprocess.run -> inference.run -> postprocess.run`` by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

PREPROCESS: Final = "preprocess.run"
INFERENCE: Final = "inference.run"
POSTPROCESS: Final = "postprocess.run"

STAGES: Final = ("preprocess", "inference", "postprocess")
TASK_OF_STAGE: Final = {"preprocess": PREPROCESS, "inference": INFERENCE, "postprocess": POSTPROCESS}
# Queue names equal stage names: `celery ... worker -Q inference` scales exactly one stage.
QUEUE_OF_STAGE: Final = {stage: stage for stage in STAGES}
# The registry service (registry_worker): the gateway and the CLI reach it by these names.
REGISTRY_QUEUE: Final = "registry"
REGISTRY_PROMOTE: Final = "registry.promote"
REGISTRY_ROLLBACK: Final = "registry.rollback"
REGISTRY_SYNC: Final = "registry.sync"
# Canary releases (docs/models.md): start a candidate, retire (abort) it, mark pinnable versions.
REGISTRY_CANDIDATE: Final = "registry.candidate"
REGISTRY_RETIRE: Final = "registry.retire"
REGISTRY_SERVABLE: Final = "registry.servable"
REGISTRY_TASKS: Final = (
    REGISTRY_PROMOTE,
    REGISTRY_ROLLBACK,
    REGISTRY_SYNC,
    REGISTRY_CANDIDATE,
    REGISTRY_RETIRE,
    REGISTRY_SERVABLE,
)
# Monitoring (monitor_worker, its beat) and retraining (a training worker, torch and MLflow).
MONITOR_QUEUE: Final = "monitor"
MONITOR_RUN: Final = "monitor.run"
TRAINING_QUEUE: Final = "training"
TRAINING_RETRAIN: Final = "training.retrain"
ROUTES: Final = {
    **{task: {"queue": QUEUE_OF_STAGE[stage]} for stage, task in TASK_OF_STAGE.items()},
    **{task: {"queue": REGISTRY_QUEUE} for task in REGISTRY_TASKS},
    MONITOR_RUN: {"queue": MONITOR_QUEUE},
    TRAINING_RETRAIN: {"queue": TRAINING_QUEUE},
}


def inference_queue(model: str, dedicated: Iterable[str] = ()) -> str:
    """The queue of a model's inference: ``inference.<model>`` when it has its own workers."""
    return f"{QUEUE_OF_STAGE['inference']}.{model}" if model in dedicated else QUEUE_OF_STAGE["inference"]
