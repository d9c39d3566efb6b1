"""Celery entry points of the monitor service.

    celery -A monitor_worker.worker:app worker -Q monitor --pool solo
    celery -A monitor_worker.worker:app beat --scheduler celery.beat:Scheduler

Beat uses the in-memory scheduler (no shelve file: nothing pickled); it sends ``monitor.run``
every MONITOR_INTERVAL_S.
"""

from digitflow.settings import MonitorSettings
from digitflow.tasks import MONITOR_QUEUE, MONITOR_RUN
from digitflow.worker_runtime import create_worker_app, prepare_process

settings = MonitorSettings.from_env()
prepare_process("monitor", settings.var_dir)
app = create_worker_app("monitor", MONITOR_QUEUE, settings)
app.conf.beat_schedule = {
    "monitor": {
        "task": MONITOR_RUN,
        "schedule": settings.monitor_interval_s,
        "args": ({},),
        "options": {"queue": MONITOR_QUEUE, "expires": settings.monitor_interval_s},
    }
}

from monitor_worker.tasks import register_tasks  # noqa: E402

register_tasks(app, settings)
