"""Celery entry point: ``celery -A registry_worker.worker:app worker -Q registry --pool solo``.

One process is enough (promotions are rare and run one at a time); ``--pool solo`` keeps MLflow's
client in the process that consumes.
"""

from digitflow.settings import RegistrySettings
from digitflow.worker_runtime import create_worker_app, prepare_process

settings = RegistrySettings.from_env()
prepare_process("registry", settings.var_dir)
app = create_worker_app("registry", "registry", settings)

from registry_worker.tasks import register_tasks  # noqa: E402

register_tasks(app, settings)
