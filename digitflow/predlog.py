"""The prediction log: one SQL row per finished job, and the true labels users send back.

SQLAlchemy Core on ``DATABASE_URL`` (SQLite under ``VAR_DIR`` by default, in WAL mode so that
several worker processes and the gateway write side by side; PostgreSQL in compose). The
postprocess stage appends a whole batch in one transaction; a redelivered batch inserts nothing
twice (``job_id`` is unique, conflicts are ignored). Rows keep the 28x28 input (784 bytes) and
the penultimate embedding (128 float16), so the monitor and retraining need no image store.

Retention (:meth:`PredictionLog.prune`, run by the monitor): the input and embedding of a row
nobody labelled are dropped after PIXELS_RETENTION_DAYS (feedback then answers 409
input_gone); labelled rows keep theirs, they are the retraining data. Whole rows go after
PREDICTIONS_RETENTION_DAYS. Accuracy by age is counted in SQL, so it covers every row kept.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Mapping, Sequence
from typing import Any

# An optional store: the services that write or read it install SQLAlchemy with their extra.
if importlib.util.find_spec("sqlalchemy") is None:
    raise ImportError(
        "digitflow.predlog needs SQLAlchemy: install the extra of the service that uses it "
        "(gateway, postprocess, monitor or training), e.g. pip install 'digitflow[postprocess]'"
    )

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Insert,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    TextClause,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from digitflow.predlog_state import LogState, remade_after_reset

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
# A shadow candidate's answer to a job is logged as its own row, job id + this suffix (job ids
# are 32 characters): it counts for the candidate's version, takes the job's feedback too, and
# is never retraining data (the job's own row is).
SHADOW_SUFFIX = ":shadow"
SCALARS = ("id", "at", "version", "label", "confidence", "calibrated", "outlier_score", "outlier")
STATS = ("ink_ratio", "mean_intensity", "aspect")
# Every column a row may carry (``id`` is the database's). The append statement is text, which
# applies no column defaults: a row's missing nullable columns are NULL and scalar defaults
# (``outlier`` False) are filled in here, as the Core insert did.
ROW_COLUMNS = tuple(c for c in predictions.columns if c.name != "id")
ROW_DEFAULTS: dict[str, Any] = {c.name: None for c in ROW_COLUMNS if c.nullable} | {
    c.name: c.default.arg for c in ROW_COLUMNS if isinstance(c.default, ScalarElementColumnDefault)
}


def append_statement(engine: Engine) -> TextClause | Insert:
    """The batch insert that skips already logged jobs, built once per log.

    SQLAlchemy 2.0 cannot cache the dialects' ``insert().on_conflict_do_nothing()`` (they set
    ``inherit_cache = False``), so that construct was compiled again on every batch, half of an
    append's CPU. SQLite (3.24+) and PostgreSQL accept the same ``ON CONFLICT (job_id) DO
    NOTHING``, and a text statement with typed binds is compiled once per engine and cached;
    the binds keep the columns' types (LargeBinary, Boolean) as the Core insert did.
    """
    if engine.dialect.name not in ("sqlite", "postgresql"):
        return predictions.insert()  # no portable ON CONFLICT: a redelivered job fails the batch
    quote = engine.dialect.identifier_preparer.quote
    names = ", ".join(quote(c.name) for c in ROW_COLUMNS)
    binds = ", ".join(f":{c.name}" for c in ROW_COLUMNS)
    sql = f"INSERT INTO {quote(predictions.name)} ({names}) VALUES ({binds}) ON CONFLICT ({quote('job_id')}) DO NOTHING"
    return text(sql).bindparams(*(bindparam(c.name, type_=c.type) for c in ROW_COLUMNS))


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
        self._append = append_statement(self.engine)

    @functools.cached_property
    def state(self) -> LogState:
        """The log's id and retrain watermarks (made on first use: only the monitor and training ask)."""
        return LogState(self.engine)

    def close(self) -> None:
        """Close the pooled connections (PostgreSQL's are sockets a server counts)."""
        self.engine.dispose()

    def append(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert a batch of rows in one transaction (already logged jobs are skipped); any
        error rolls the whole batch back. A row lacking a required column fails the batch."""
        if not rows:
            return 0
        defaults = {**ROW_DEFAULTS, "at": time.time()}
        full = [{**defaults, **row} for row in rows]
        try:
            with self.engine.begin() as conn:
                conn.execute(self._append, full)
        except (ProgrammingError, OperationalError):
            # The tables this process made at start may be gone (the database was reset under
            # it): made again, the batch is written once more.
            if not remade_after_reset(self.engine, metadata, predictions):
                raise
            with self.engine.begin() as conn:
                conn.execute(self._append, full)
        return len(full)

    def get(self, job_id: str) -> Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(select(predictions).where(predictions.c.job_id == job_id)).first()

    def set_feedback(self, job_id: str, label: int) -> bool:
        """Record (or replace) the true label of a logged job; False if the job has no row.
        Sending the same label again changes nothing (not even when it counts as recent)."""
        c = predictions.c
        with self.engine.begin() as conn:
            done = conn.execute(
                update(predictions)
                .where(c.job_id.in_([job_id, job_id + SHADOW_SUFFIX]), c.true_label.is_distinct_from(label))
                .values(true_label=label, feedback_at=time.time())
            )
            if done.rowcount:
                return True
            return conn.execute(select(c.id).where(c.job_id == job_id)).first() is not None

    def window(self, model: str, since: float, until: float | None = None, limit: int = 50_000) -> list[Row[Any]]:
        """Scalar columns (no pixels or embeddings) of the most recent rows in [since, until)."""
        cols = [predictions.c[name] for name in (*SCALARS, *STATS, "true_label", "feedback_at")]
        query = select(*cols).where(predictions.c.model == model, predictions.c.at >= since)
        if until is not None:
            query = query.where(predictions.c.at < until)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(predictions.c.id.desc()).limit(limit)).fetchall())

    def embeddings(self, ids: Sequence[int]) -> list[bytes]:
        if not ids:
            return []
        query = select(predictions.c.embedding).where(predictions.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(query) if r[0]]

    def labelled(self, model: str, after_id: int = 0, inliers_only: bool = False) -> list[Row[Any]]:
        """Rows of ``model`` with feedback (id, at, version, pixels, true_label), oldest first.

        Flagged outliers are included unless ``inliers_only``: a user's label says the input is a
        digit of that class, and a new population's inputs are the ones the detector flags."""
        c = predictions.c
        query = select(c.id, c.at, c.version, c.pixels, c.true_label, c.label).where(
            c.model == model,
            c.true_label.is_not(None),
            c.pixels.is_not(None),
            c.id > after_id,
            c.job_id.not_like("%" + SHADOW_SUFFIX),
        )
        if inliers_only:
            query = query.where(c.outlier.is_(False))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(c.feedback_at, c.id)))

    def count_labelled(self, model: str, after_id: int = 0) -> int:
        """How many rows of ``model`` after ``after_id`` have feedback, flagged outliers included
        (the monitor's retrain trigger: as many inputs as :meth:`labelled` trains on)."""
        c = predictions.c
        query = select(func.count()).where(
            c.model == model,
            c.true_label.is_not(None),
            c.id > after_id,
            c.job_id.not_like("%" + SHADOW_SUFFIX),
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

    def accuracy_between(self, model: str, version: str, since: float, until: float) -> tuple[int, int]:
        """(labelled, correct) rows of ``model`` ``version`` logged in [since, until), counted in SQL."""
        c = predictions.c
        query = select(
            func.count(c.true_label), func.coalesce(func.sum(case((c.label == c.true_label, 1), else_=0)), 0)
        ).where(c.model == model, c.version == version, c.at >= since, c.at < until, c.true_label.is_not(None))
        with self.engine.connect() as conn:
            labelled, correct = conn.execute(query).one()
        return int(labelled), int(correct)

    def models(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(str(r[0]) for r in conn.execute(select(predictions.c.model).distinct()))

    def prune(
        self, model: str, since: float, inputs_before: float, rows_before: float, batch: int = 5000
    ) -> dict[str, int]:
        """Drop the inputs and embeddings of unlabelled rows of ``model`` logged in [since,
        inputs_before), and delete its rows older than ``rows_before``; in batches of ``batch``
        rows, each its own transaction, so writers are never blocked for long.

        ``since`` is the previous call's ``inputs_before``: each call only scans the rows that
        aged past the cut-off since, not everything already pruned. Returns the counts.
        """
        c = predictions.c
        old = select(c.id).where(c.model == model, c.at < rows_before)
        rows = self._in_batches(lambda ids: delete(predictions).where(c.id.in_(ids)), old, batch)
        stale = select(c.id).where(
            c.model == model, c.at >= since, c.at < inputs_before, c.true_label.is_(None), c.pixels.is_not(None)
        )
        inputs = self._in_batches(
            lambda ids: update(predictions).where(c.id.in_(ids)).values(pixels=None, embedding=None), stale, batch
        )
        return {"inputs_dropped": inputs, "rows_deleted": rows}

    def _in_batches(self, statement: Any, ids: Any, batch: int) -> int:
        done = 0
        while True:
            with self.engine.begin() as conn:
                chunk = [r[0] for r in conn.execute(ids.limit(batch))]
                if chunk:
                    conn.execute(statement(chunk))
            done += len(chunk)
            if len(chunk) < batch:
                return done
