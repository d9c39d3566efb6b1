"""Celery entry point: ``celery -A training_worker.worker:app worker -Q training --pool solo``.

Runs ``training.retrain`` (sent by the monitor on a drift or accuracy alert) one at a time: one
process, torch and MLflow in it. Settings are checked at start, so a missing base data set
(DATA_DIR) stops the worker before it accepts a request.
"""

from digitflow.tasks import TRAINING_QUEUE
from digitflow.worker_runtime import create_worker_app, prepare_process
from training_worker.settings import TrainingSettings

settings = TrainingSettings.from_env()
prepare_process("training", settings.var_dir)
app = create_worker_app("training", TRAINING_QUEUE, settings)

from training_worker.tasks import register_tasks  # noqa: E402

register_tasks(app, settings)
