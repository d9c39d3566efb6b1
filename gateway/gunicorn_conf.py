"""gunicorn settings for the gateway, overridable from the environment.

One process batches best (bigger batches form in one batcher); threads must outnumber the
requests held open by long-polls. Metrics of all gunicorn processes are merged through
prometheus_client's multiprocess directory, which the master empties once at start.
"""

import os
import shutil
from pathlib import Path

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GATEWAY_WORKERS", "1"))
threads = int(os.environ.get("GATEWAY_THREADS", "64"))
worker_class = "gthread"
timeout = 60
graceful_timeout = 10
keepalive = 5
accesslog = None
errorlog = "-"


def on_starting(server: object) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def child_exit(server: object, worker: object) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
