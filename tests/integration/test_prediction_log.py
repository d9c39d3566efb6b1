"""The prediction log on a real database, SQLite and PostgreSQL (compose's engine): batch
inserts that ignore redelivered jobs, feedback, accuracy by age in SQL, and retention."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from digitflow.errors import ConfigurationError
from digitflow.predlog import PredictionLog
from digitflow.settings import MonitorSettings
from monitor_worker.report import accuracy_by_age
from monitor_worker.tasks import prune_log

DAY = 86400.0
T0 = 1_700_000_000.0


def row(job: str, at: float, label: int = 3, version: str = "1", model: str = "digits", **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "at": at,
        "model": model,
        "version": version,
        "label": label,
        "classes": 10,
        "confidence": 0.9,
        "calibrated": 0.88,
        "outlier_score": 10.0,
        "outlier": False,
        "ink_ratio": 0.2,
        "mean_intensity": 40.0,
        "aspect": 1.0,
        "pixels": bytes(784),
        "embedding": bytes(256),
        **extra,
    }


def test_batches_feedback_and_redelivery(prediction_log: PredictionLog) -> None:
    assert prediction_log.append([row("a", T0), row("b", T0 + 1, label=5), row("c", T0 + 2, outlier=True)]) == 3
    prediction_log.append([row("a", T0 + 9, label=9), row("d", T0 + 3)])  # a redelivered batch: "a" is kept as it was
    first = prediction_log.get("a")
    assert first is not None and first.label == 3 and first.at == T0 and len(first.pixels) == 784
    assert prediction_log.get("nope") is None
    assert (
        prediction_log.set_feedback("a", 3)
        and prediction_log.set_feedback("b", 4)
        and prediction_log.set_feedback("c", 1)
    )
    assert not prediction_log.set_feedback("nope", 1)
    assert prediction_log.set_feedback("a", 3)  # idempotent
    labelled = prediction_log.labelled("digits")
    assert [r.true_label for r in labelled] == [3, 4, 1]  # the flagged "c" too: its label says it is a digit
    assert [r.true_label for r in prediction_log.labelled("digits", inliers_only=True)] == [3, 4]
    assert (
        prediction_log.count_labelled("digits") == 3
        and prediction_log.count_labelled("digits", after_id=labelled[0].id) == 2
    )
    assert [r.id for r in prediction_log.window("digits", T0 + 1)] == [
        prediction_log.get(j).id for j in ("d", "c", "b")
    ]  # type: ignore[union-attr]
    assert prediction_log.versions("digits", T0) == ["1"] and prediction_log.first_seen("digits", "1") == T0
    assert prediction_log.models() == ["digits"]


def test_accuracy_by_age_counts_every_kept_row(prediction_log: PredictionLog) -> None:
    # Version 1: right on day 1, half right in week 1, wrong in month 1 and quarter 1 (60 days on).
    rows = [
        row("d1", T0, label=2),
        row("w1a", T0 + 2 * DAY, label=2),
        row("w1b", T0 + 3 * DAY, label=2),
        row("m1", T0 + 20 * DAY, label=2),
        row("q1", T0 + 60 * DAY, label=2),
        row("other", T0 + 1, label=2, version="2"),
        row("unlabelled", T0 + 5),
    ]
    prediction_log.append(rows)
    for job, truth in (("d1", 2), ("w1a", 2), ("w1b", 7), ("m1", 7), ("q1", 0), ("other", 9)):
        prediction_log.set_feedback(job, truth)
    ages = accuracy_by_age(prediction_log, "digits", "1", prediction_log.first_seen("digits", "1"), 1.0)
    assert ages == [
        {"age": "day 1", "labelled": 1, "accuracy": 1.0},
        {"age": "week 1", "labelled": 2, "accuracy": 0.5},
        {"age": "month 1", "labelled": 1, "accuracy": 0.0},
        {"age": "quarter 1", "labelled": 1, "accuracy": 0.0},
    ]
    assert accuracy_by_age(prediction_log, "digits", "3", None, 1.0)[0] == {
        "age": "day 1",
        "labelled": 0,
        "accuracy": None,
    }


def test_retention_drops_unlabelled_inputs_then_old_rows(
    prediction_log: PredictionLog, redis_client: redis.Redis
) -> None:
    now = T0 + 500 * DAY
    prediction_log.append([row(f"old{i}", now - 450 * DAY + i) for i in range(3)])  # beyond row retention
    prediction_log.append([row(f"mid{i}", now - 40 * DAY + i) for i in range(5)])  # beyond input retention
    prediction_log.append([row("mid-labelled", now - 40 * DAY), row("fresh", now - 1 * DAY)])
    prediction_log.set_feedback("mid-labelled", 3)
    s = MonitorSettings(pixels_retention_days=30, predictions_retention_days=400)
    assert prune_log(s, redis_client, prediction_log, now=now) == {"digits": {"inputs_dropped": 5, "rows_deleted": 3}}
    assert prediction_log.get("old0") is None
    mid = prediction_log.get("mid0")
    assert mid is not None and mid.pixels is None and mid.embedding is None and mid.label == 3  # scalars stay
    kept = prediction_log.get("mid-labelled")
    assert kept is not None and kept.pixels is not None  # labelled inputs are the retraining data
    assert prediction_log.get("fresh").pixels is not None  # type: ignore[union-attr]
    # The next run scans only what aged past the cut-off since (a row older than the last
    # cut-off that arrives late, e.g. a redelivered batch, is left alone).
    prediction_log.append([row("late", now - 35 * DAY), row("next", now - 30 * DAY + 60)])
    assert prune_log(s, redis_client, prediction_log, now=now + 120) == {
        "digits": {"inputs_dropped": 1, "rows_deleted": 0}
    }
    assert prediction_log.get("next").pixels is None and prediction_log.get("late").pixels is not None  # type: ignore[union-attr]
    keep_all = MonitorSettings(pixels_retention_days=0, predictions_retention_days=0)
    assert prune_log(keep_all, redis_client, prediction_log, now=now + 10**6) == {
        "digits": {"inputs_dropped": 0, "rows_deleted": 0}
    }


def test_prune_works_in_batches(prediction_log: PredictionLog) -> None:
    prediction_log.append([row(f"r{i}", T0 + i) for i in range(7)])
    assert prediction_log.prune("digits", 0.0, T0 + 100, T0 + 3, batch=2) == {"inputs_dropped": 4, "rows_deleted": 3}
    assert len(prediction_log.window("digits", 0.0)) == 4


@pytest.mark.parametrize("days", [-1, 0.5])
def test_retention_shorter_than_the_longest_window_is_refused(days: float) -> None:
    with pytest.raises(ConfigurationError, match="RETENTION_DAYS"):
        MonitorSettings.from_env({}, pixels_retention_days=days)


def test_a_log_whose_database_was_reset_under_it_makes_its_tables_again(prediction_log: PredictionLog) -> None:
    """A new PostgreSQL volume under a running postprocess worker (tests/deploy): the next batch
    finds no table; it is made again and the batch written, instead of every row being lost."""
    from digitflow.predlog import metadata

    assert prediction_log.append([row("before", 1.0)]) == 1
    metadata.drop_all(prediction_log.engine)
    assert prediction_log.append([row("after", 2.0), row("after-2", 2.0)]) == 2
    assert prediction_log.get("after") is not None and prediction_log.get("before") is None


def test_a_reset_database_is_a_new_log_to_a_running_process(prediction_log: PredictionLog) -> None:
    """The log's id is read from the log, not kept: after the database is reset under a running
    monitor, its next report sees a new id (and resets the Redis state pointing into the old)."""
    from digitflow.predlog import metadata
    from digitflow.predlog_state import metadata as state_metadata

    first = prediction_log.state.store_id()
    assert prediction_log.state.store_id() == first
    metadata.drop_all(prediction_log.engine)
    state_metadata.drop_all(prediction_log.engine)
    second = prediction_log.state.store_id()
    assert second != first and prediction_log.state.store_id() == second
