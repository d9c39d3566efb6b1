"""Celery entry point: ``celery -A preprocess_worker.worker:app worker -Q preprocess``."""

from digitflow.settings import WorkerSettings
from digitflow.worker_runtime import create_worker_app, prepare_process

settings = WorkerSettings.from_env()
prepare_process("preprocess", settings.var_dir)
app = create_worker_app("preprocess", "preprocess", settings)

from preprocess_worker.tasks import register_tasks  # noqa: E402

register_tasks(app, settings)
