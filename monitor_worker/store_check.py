"""The monitor's side of store identity: its Redis state is written against one prediction log.

The monitor owns the Redis state that points into the prediction log (report, alert start
times, prune cut-off; ``digitflow.store_identity.POINTS_INTO``). It checks the binding when it
starts and before every report: a log with another id (``var/`` deleted, a new database) resets
that state, with one ``store_state_reset`` line. The retrain watermark lives in the log itself
now; a Redis watermark left by an older version is moved into the log when it can belong to it
(no binding recorded yet or the same log, its row id not past the log's last row, and the log
has none of its own), and dropped otherwise.
"""

from __future__ import annotations

import logging

import redis

from digitflow.monitor_store import drop_legacy_retrain_state, legacy_retrain_states
from digitflow.predlog import PredictionLog, predictions
from digitflow.store_identity import PREDICTIONS, Binding, bind, bound_id, log_binding, redis_store_id

logger = logging.getLogger("monitor_worker.store_check")


def check_prediction_log(client: redis.Redis, log: PredictionLog, full: bool = False) -> Binding:
    """Tie the monitor's Redis state to ``log`` (adopt, or reset with one log line); ``full``
    (at start) also looks for watermarks an older version left in Redis."""
    current = log.state.store_id()
    if not full and bound_id(client, PREDICTIONS) == current:
        return Binding(PREDICTIONS, "same", current, current)
    legacy = legacy_retrain_states(client)  # read first: a reset deletes them
    binding = bind(client, PREDICTIONS, current)
    moved, dropped = [], []
    if legacy:
        top = log.state.max_row_id(predictions)
        for model, (last_id, at) in sorted(legacy.items()):
            if binding.outcome != "reset" and last_id <= top and log.state.retrain_mark(model) is None:
                log.state.set_retrain_mark(model, last_id, at)
                moved.append({"model": model, "last_id": last_id})
            else:
                dropped.append({"model": model, "last_id": last_id, "log_last_id": top})
            drop_legacy_retrain_state(client, model)
    if binding.outcome != "same" or legacy:
        extra = {"retrain_watermarks_moved_into_log": moved, "retrain_watermarks_dropped": dropped}
        log_binding(logger, binding, redis_store_id=redis_store_id(client), **extra)
    return binding


def retrain_mark(log: PredictionLog, model: str) -> tuple[int, float]:
    """(last row id a retrain used, when it ran) on this log; (0, 0.0) when none ran on it."""
    return log.state.retrain_mark(model) or (0, 0.0)
