"""Celery entry point: ``celery -A inference_worker.worker:app worker -Q inference``.

On a GPU, run it with ``--pool solo`` (one process owns the device); on CPUs, prefork with one
torch thread per process scales across cores.
"""

from digitflow.settings import InferenceSettings
from digitflow.worker_runtime import create_worker_app, prepare_process

settings = InferenceSettings.from_env()
prepare_process("inference", settings.var_dir)
app = create_worker_app("inference", "inference", settings)

from inference_worker.tasks import register_tasks  # noqa: E402

register_tasks(app, settings)
