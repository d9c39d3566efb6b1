"""What the prediction log keeps about itself: its id, and the retrain watermark over its rows.

The id (a uuid, made by the first process that asks) tells the Redis state that points into
the log (``digitflow.store_identity``) whether it still points into this log: a log deleted
and created again (``var/`` removed, a new PostgreSQL volume) gets a new one.

The retrain watermark (the last row a retrain used, and when it ran) is state over this log's
own rows, so it lives in this log: a new log starts with none, a log that outlives a Redis keeps
its own. It was a Redis hash (``df:monitor:retrain-state:<model>``) before, which kept its row
id 941 across a log whose ids restarted at 1 and so switched the retrain trigger off.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, func, insert, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

metadata = MetaData()
about = Table(
    "digitflow_store",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)
marks = Table(
    "retrain_marks",
    metadata,
    Column("model", String(128), primary_key=True),
    Column("last_id", Integer, nullable=False),
    Column("at", Float, nullable=False),
)
STORE_ID = "store_id"


def remade_after_reset(engine: Engine, tables: MetaData, probe: Table) -> bool:
    """After a statement on ``probe`` failed: True when ``probe`` is gone (the database was reset
    under this running process, a new PostgreSQL volume) and ``tables`` have been made again;
    False when it is there, so the failure was something else for the caller to raise."""
    if inspect(engine).has_table(probe.name):
        return False
    tables.create_all(engine, checkfirst=True)
    return True


class LogState:
    """The log's id and retrain watermarks, on the log's own engine (tables made on first use)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine, checkfirst=True)

    def store_id(self) -> str:
        """This log's id, created on first use; every process on the same log reads the same one.

        Read from the log at every call (one indexed row, once per monitor report), not kept in
        memory: a database reset under a running service (a new PostgreSQL volume) is a new log,
        noticed at the next call, with its tables made again."""
        try:
            found = self._read_id()
        except (ProgrammingError, OperationalError):
            if not remade_after_reset(self.engine, metadata, about):
                raise
            found = None
        if found is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(about).values(name=STORE_ID, value=uuid.uuid4().hex))
            except IntegrityError:  # another process made it first: theirs counts
                pass
            found = self._read_id()
        return str(found)

    def _read_id(self) -> str | None:
        with self.engine.connect() as conn:
            found = conn.execute(select(about.c.value).where(about.c.name == STORE_ID)).scalar()
        return None if found is None else str(found)

    def retrain_mark(self, model: str) -> tuple[int, float] | None:
        """(last row id a retrain of ``model`` used, when it ran), or None if none ran on this log."""
        with self.engine.connect() as conn:
            row = conn.execute(select(marks.c.last_id, marks.c.at).where(marks.c.model == model)).first()
        return None if row is None else (int(row[0]), float(row[1]))

    def set_retrain_mark(self, model: str, last_id: int, at: float | None = None) -> None:
        values = {"last_id": int(last_id), "at": time.time() if at is None else float(at)}
        for _ in range(2):  # the second try follows a row inserted meanwhile by another process
            try:
                with self.engine.begin() as conn:
                    if not conn.execute(update(marks).where(marks.c.model == model).values(**values)).rowcount:
                        conn.execute(insert(marks).values(model=model, **values))
                return
            except IntegrityError:
                continue

    def max_row_id(self, rows: Table) -> int:
        """The highest row id of ``rows`` (the predictions table), 0 when empty."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(rows.c.id), 0))).scalar_one())
