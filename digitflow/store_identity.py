"""Each store's identity, and the Redis state that points into another store tied to it.

Three stores outlive each other: Redis, the prediction log (SQL) and MLflow's registry. Each
has an id: Redis ``df:store-id`` (made by the first service that asks), the prediction log a
row of its own (``digitflow.predlog_state``), MLflow its ``digitflow`` experiment's id and
creation time (``RegistryStore.store_id``). Redis state that points into another store (row
ids, times and version numbers of that store) is written against one store: ``df:stores``
records which, per store kind. The one service that owns that state checks it when it starts
and whenever it reads it (:func:`bind`):

* same id: nothing to do;
* no id recorded (a new Redis, or state from before store ids): the state is adopted, the id
  recorded;
* another id (the store was reset or replaced; the Redis was not): the state is deleted, the
  new id recorded, and the service logs one ``store_state_reset`` line saying what and why.

docs/operations.md ("What each store holds, and what happens when one is reset") lists the
decision for every piece of state.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from digitflow.keys import RELEASE_PREFIX, STORE_ID, STORES, monitor
from digitflow.observability import log_event

PREDICTIONS = "predictions"
MLFLOW = "mlflow"
# Redis state (key patterns) written against each store, deleted when that store is another.
# The registry view (df:models) is MLflow's too, but it is rewritten from the new store in one
# transaction instead (deleting it first would leave the gateway without models for a moment).
POINTS_INTO: dict[str, tuple[str, ...]] = {
    # Alert start times and the report are times and row counts of the log; the prune cut-off
    # a time up to which its rows were pruned; retrain-state the pre-store-id watermark.
    PREDICTIONS: tuple(monitor(kind, "*") for kind in ("report", "since", "pruned", "retrain-state")),
    # Per-version release counters and alerts name versions that only mean something in one store.
    MLFLOW: (f"{RELEASE_PREFIX}*", monitor("report", "*"), monitor("since", "*")),
}
WHY = {
    PREDICTIONS: "the prediction log is not the one this Redis's monitoring state was written against "
    "(reset or replaced): its row ids and times mean nothing in this log",
    MLFLOW: "the MLflow registry is not the one this Redis's registry view and release state describe "
    "(reset or replaced): its version numbers name other models there",
}


@dataclass(frozen=True)
class Binding:
    """What :func:`bind` found and did."""

    store: str
    outcome: str  # "same", "adopted" or "reset"
    previous: str | None
    current: str
    reset: list[str] = field(default_factory=list)


def redis_store_id(client: redis.Redis) -> str:
    """This Redis's id, made by the first caller (a flushed or new Redis gets a new one)."""
    client.set(STORE_ID, uuid.uuid4().hex, nx=True)
    raw = cast(bytes | None, client.get(STORE_ID))
    return raw.decode() if raw else ""


def bound_id(client: redis.Redis, store: str) -> str | None:
    """The id of the ``store`` that this Redis's state points into, None if none recorded."""
    raw = cast(bytes | None, client.hget(STORES, store))
    return raw.decode() if raw else None


def bind(client: redis.Redis, store: str, store_id: str) -> Binding:
    """Tie the Redis state pointing into ``store`` to the store with ``store_id``: adopt it when no
    id is recorded, delete it (POINTS_INTO) when another one is. Only the state's owner calls this."""
    previous = bound_id(client, store)
    if previous == store_id:
        return Binding(store, "same", previous, store_id)
    reset: list[str] = []
    if previous is not None:
        for pattern in POINTS_INTO[store]:
            reset += sorted(k.decode() for k in client.scan_iter(match=pattern, count=500))
    pipe = client.pipeline(transaction=True)
    if reset:
        pipe.delete(*reset)
    pipe.hset(STORES, store, store_id)
    pipe.execute()
    return Binding(store, "adopted" if previous is None else "reset", previous, store_id, reset)


def log_binding(logger: logging.Logger, binding: Binding, **fields: Any) -> None:
    """The one line a service logs when a binding changed something (callers skip "same")."""
    common = {"store": binding.store, "store_id": binding.current, **fields}
    if binding.outcome == "reset":
        log_event(
            logger,
            "store_state_reset",
            logging.WARNING,
            previous_store_id=binding.previous,
            reset=binding.reset,
            reason=WHY[binding.store],
            **common,
        )
    else:
        log_event(logger, "store_bound", outcome=binding.outcome, **common)
