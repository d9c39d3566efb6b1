"""JSON logging and Prometheus metrics, the same shape in every service.

Each log line is one JSON object with ``service``, ``event`` and, where they apply, ``job_id``,
``stage``, ``duration_ms`` and ``error_code``, plus every other field the event was logged with.
Metrics use prometheus_client's multiprocess mode because gunicorn and Celery's prefork pool
spread one service over several processes; the service's HTTP endpoint aggregates them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# What every LogRecord carries; anything else on a record came from ``extra=`` (log_event's fields).
# Celery's ``data`` is left out: it holds the repr of a task's arguments, a whole batch.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "data"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 4),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS and value is not None and name not in line:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(service: str, level: str = "INFO", fmt: str = "json", log_file: Path | None = None) -> None:
    """Send every log record to stdout (containers) or to ``log_file`` (``make run``)."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(service) if fmt == "json" else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Celery's per-task success line formats the task's return value with saferepr: that is
    # the whole next batch message, and costs ~10% of a worker. Our stages log their own lines.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    # "Task ... received" for every message: our batch_done / job_stage_done lines say more.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"event": event, **fields})


def render_metrics(extra: CollectorRegistry | None = None) -> bytes:
    """Prometheus text of all this service's processes (plus an optional live registry)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry)
    if extra is not None:
        text += generate_latest(extra)
    return text


# prometheus_client opens its multiprocess files when a metric without labels is defined, which is
# at import, before any service code runs: the folder an image's ENV names must exist by then (in a
# container /tmp is an empty tmpfs).
if _MULTIPROC_DIR := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STAGE_SECONDS = Histogram(
    "digitflow_stage_duration_seconds", "Run time of one stage batch", ["stage"], buckets=LATENCY_BUCKETS
)
STAGE_QUEUE_SECONDS = Histogram(
    "digitflow_stage_queue_wait_seconds", "Time a batch waited in the stage's queue", ["stage"], buckets=LATENCY_BUCKETS
)
JOBS_PROCESSED = Counter("digitflow_jobs_processed", "Jobs a stage finished successfully", ["stage"])
JOBS_FAILED = Counter("digitflow_jobs_failed", "Jobs a stage failed, by error code", ["stage", "code"])
BATCH_SIZE = Histogram(
    "digitflow_batch_size", "Jobs per batch message", ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
MODEL_LOADS = Counter("digitflow_model_loads", "Model loads by outcome", ["model", "outcome"])
MODEL_EVICTIONS = Counter("digitflow_model_evictions", "Model versions dropped from memory (LRU)", ["model"])
MODEL_DEPLOYS = Counter("digitflow_model_deploys", "Version switches by outcome (swapped|failed)", ["model", "outcome"])
MODEL_SWAP_SECONDS = Histogram(
    "digitflow_model_swap_seconds", "Load-next-to-the-old-one then swap, per process", buckets=LATENCY_BUCKETS
)
MODEL_LOADED = Gauge(
    "digitflow_model_loaded",
    "1 while this process serves the model version",
    ["model", "version"],
    multiprocess_mode="max",
)
