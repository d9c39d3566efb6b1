"""Celery entry point: ``celery -A postprocess_worker.worker:app worker -Q postprocess``."""

from digitflow.settings import WorkerSettings
from digitflow.worker_runtime import create_worker_app, prepare_process

settings = WorkerSettings.from_env()
prepare_process("postprocess", settings.var_dir)
app = create_worker_app("postprocess", "postprocess", settings)

from postprocess_worker.tasks import register_tasks  # noqa: E402

register_tasks(app, settings)
