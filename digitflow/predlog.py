"""The prediction log: one SQL row per finished job, and the true labels users send back.

SQLAlchemy Core on ``DATABASE_URL`` (SQLite under ``VAR_DIR`` by default, in WAL mode so that
several worker processes and the gateway write side by side; PostgreSQL in compose). The
postprocess stage appends a whole batch in one transaction; a redelivered batch inserts nothing
twice (``job_id`` is unique, conflicts are ignored). Rows keep the 28x28 input (784 bytes) and
the penultimate embedding (128 float16), so the monitor and retraining need no image store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    update,
)  # fmt: skip
from sqlalchemy.engine import Engine, Row

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, unique=True),
    Column("at", Float, nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", String(32), nullable=False),
    Column("label", SmallInteger, nullable=False),  # the predicted class (even when rejected)
    Column("classes", SmallInteger, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("calibrated", Float, nullable=True),  # max probability after temperature scaling
    Column("outlier_score", Float, nullable=True),
    Column("outlier", Boolean, nullable=False, default=False),
    Column("ink_ratio", Float, nullable=True),
    Column("mean_intensity", Float, nullable=True),
    Column("aspect", Float, nullable=True),
    Column("pixels", LargeBinary, nullable=True),
    Column("embedding", LargeBinary, nullable=True),
    Column("true_label", SmallInteger, nullable=True),
    Column("feedback_at", Float, nullable=True),
    Index("ix_predictions_model_at", "model", "at"),
)
SCALARS = ("id", "at", "version", "label", "confidence", "calibrated", "outlier_score", "outlier")
STATS = ("ink_ratio", "mean_intensity", "aspect")


def make_engine(url: str) -> Engine:
    """An engine on ``url``; SQLite gets WAL and a busy timeout (many writer processes)."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 15})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class PredictionLog:
    """Reads and writes the log; SQLAlchemy errors propagate (callers decide what is fatal)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        metadata.create_all(self.engine, checkfirst=True)

    def _insert(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(predictions).on_conflict_do_nothing(index_elements=["job_id"])
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(predictions).on_conflict_do_nothing(index_elements=["job_id"])
        return predictions.insert()

    def append(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert a batch of rows in one transaction (already logged jobs are skipped)."""
        if not rows:
            return 0
        full = [{"at": time.time(), "outlier": False, **row} for row in rows]
        with self.engine.begin() as conn:
            conn.execute(self._insert(), full)
        return len(full)

    def get(self, job_id: str) -> Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(select(predictions).where(predictions.c.job_id == job_id)).first()

    def set_feedback(self, job_id: str, label: int) -> bool:
        """Record (or replace) the true label of a logged job; False if the job has no row."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(predictions)
                .where(predictions.c.job_id == job_id)
                .values(true_label=label, feedback_at=time.time())
            )
        return bool(done.rowcount)

    def window(self, model: str, since: float, until: float | None = None, limit: int = 50_000) -> list[Row[Any]]:
        """Scalar columns (no pixels or embeddings) of the most recent rows in [since, until)."""
        cols = [predictions.c[name] for name in (*SCALARS, *STATS, "true_label", "feedback_at")]
        query = select(*cols).where(predictions.c.model == model, predictions.c.at >= since)
        if until is not None:
            query = query.where(predictions.c.at < until)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(predictions.c.id.desc()).limit(limit)))

    def embeddings(self, ids: Sequence[int]) -> list[bytes]:
        if not ids:
            return []
        query = select(predictions.c.embedding).where(predictions.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query) if r[0]]

    def labelled(self, model: str, after_id: int = 0, inliers_only: bool = True) -> list[Row[Any]]:
        """Rows of ``model`` with feedback (id, at, version, pixels, true_label), oldest first."""
        c = predictions.c
        query = select(c.id, c.at, c.version, c.pixels, c.true_label, c.label).where(
            c.model == model, c.true_label.is_not(None), c.pixels.is_not(None), c.id > after_id
        )
        if inliers_only:
            query = query.where(c.outlier.is_(False))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(c.feedback_at, c.id)))

    def count_labelled(self, model: str, after_id: int = 0) -> int:
        c = predictions.c
        query = select(func.count()).where(
            c.model == model, c.true_label.is_not(None), c.outlier.is_(False), c.id > after_id
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def versions(self, model: str, since: float) -> list[str]:
        query = select(predictions.c.version).where(predictions.c.model == model, predictions.c.at >= since)
        with self.engine.connect() as conn:
            return sorted({str(r[0]) for r in conn.execute(query.distinct())}, key=lambda v: (len(v), v))

    def first_seen(self, model: str, version: str) -> float | None:
        c = predictions.c
        with self.engine.connect() as conn:
            return conn.execute(select(func.min(c.at)).where(c.model == model, c.version == version)).scalar()
