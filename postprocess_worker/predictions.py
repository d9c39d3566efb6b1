"""The postprocess stage's side of the prediction log: one transaction per batch.

The log is durable but not on the job's critical path: a database that is down or slow costs
the rows of that batch (logged and counted as ``digitflow_prediction_log_failed``), never the
jobs' results. The engine is created on first use, in the pool process (after fork).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import Counter

from digitflow.messages import Item
from digitflow.observability import log_event
from digitflow.predlog import PredictionLog
from digitflow.settings import CoreSettings
from postprocess_worker.steps import log_row, shadow_row

logger = logging.getLogger("postprocess_worker.predictions")
LOG_ROWS = Counter("digitflow_prediction_log_rows", "Rows appended to the prediction log")
LOG_FAILED = Counter("digitflow_prediction_log_failed", "Batches whose prediction-log write failed")


class PredictionWriter:
    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self._log: PredictionLog | None = None

    @property
    def log(self) -> PredictionLog:
        if self._log is None:
            self._log = PredictionLog(self.settings.prediction_db_url)
        return self._log

    def write(self, items: Sequence[Item], results: Sequence[dict[str, Any]]) -> None:
        """Append one row per job (PREDICTION_LOG=0 turns it off)."""
        if not self.settings.prediction_log or not items:
            return
        rows = [
            log_row(item, result, int(np.argmax(item["logits"]))) for item, result in zip(items, results, strict=True)
        ]
        rows += [
            shadow_row(item, self.settings.outlier_policy) for item in items if isinstance(item.get("shadow"), dict)
        ]
        try:
            LOG_ROWS.inc(self.log.append(rows))
        except Exception as exc:  # SQLAlchemy or driver errors: keep serving
            LOG_FAILED.inc()
            log_event(logger, "prediction_log_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
