"""PredictionLog.append on a real database, SQLite and PostgreSQL: a batch lands whole with every
column, fails whole, skips redelivered jobs (in the batch too) and reuses its compiled insert."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import SQLAlchemyError

from digitflow.predlog import PredictionLog, predictions

T0 = 1_700_000_000.0


def full_row(job: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "at": T0,
        "model": "digits",
        "version": "7",
        "label": 4,
        "classes": 10,
        "confidence": 0.75,
        "calibrated": 0.5,
        "outlier_score": 12.5,
        "outlier": True,
        "ink_ratio": 0.25,
        "mean_intensity": 33.0,
        "aspect": 0.5,
        "pixels": bytes(range(256)) * 3 + bytes(16),
        "embedding": b"\x01\x02" * 128,
        "true_label": 9,
        "feedback_at": T0 + 5,
        **extra,
    }


def count(prediction_log: PredictionLog) -> int:
    with prediction_log.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(predictions)).scalar_one())


def test_a_batch_lands_with_every_column(prediction_log: PredictionLog) -> None:
    rows = [full_row(f"job{i}", label=i, confidence=i / 10) for i in range(5)]
    assert prediction_log.append(rows) == 5
    for i, sent in enumerate(rows):
        got = prediction_log.get(f"job{i}")
        assert got is not None
        stored = {k: v for k, v in got._mapping.items() if k != "id"}
        assert stored == sent
        assert isinstance(got.pixels, bytes) and got.outlier is True


def test_missing_optional_columns_get_the_defaults(prediction_log: PredictionLog) -> None:
    required = ("job_id", "model", "version", "label", "classes", "confidence")
    sparse = {k: v for k, v in full_row("sparse").items() if k in required}
    prediction_log.append([sparse])
    got = prediction_log.get("sparse")
    assert got is not None and got.outlier is False and got.at > T0
    assert got.calibrated is None and got.pixels is None and got.true_label is None and got.feedback_at is None


def test_redelivered_jobs_are_skipped_within_and_across_batches(prediction_log: PredictionLog) -> None:
    prediction_log.append([full_row("a"), full_row("a", label=1), full_row("b")])
    prediction_log.append([full_row("b", label=2), full_row("c")])
    assert count(prediction_log) == 3
    a, b = prediction_log.get("a"), prediction_log.get("b")
    assert a is not None and a.label == 4 and b is not None and b.label == 4


@pytest.mark.parametrize("bad", [{"model": None}, {"label": "missing"}])
def test_a_failing_row_rolls_back_the_whole_batch(prediction_log: PredictionLog, bad: dict[str, Any]) -> None:
    prediction_log.append([full_row("kept")])
    broken = full_row("broken", **bad)
    if bad.get("label") == "missing":
        del broken["label"]
    with pytest.raises(SQLAlchemyError):
        prediction_log.append([full_row("first"), full_row("second"), broken, full_row("last")])
    assert count(prediction_log) == 1 and prediction_log.get("first") is None and prediction_log.get("last") is None
    assert prediction_log.append([full_row("after")]) == 1 and count(prediction_log) == 2  # the log still works


def test_the_insert_is_compiled_once(prediction_log: PredictionLog) -> None:
    hits: list[bool] = []

    @event.listens_for(prediction_log.engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            hits.append(context.cache_hit == context.dialect.CACHE_HIT)

    for i in range(3):
        prediction_log.append([full_row(f"j{i}")])
    for i in range(3):
        prediction_log.append([full_row(f"k{i}"), full_row(f"l{i}")])
    # One compile for a single row and one for executemany, then every batch reuses them.
    assert hits == [False, True, True, False, True, True]
