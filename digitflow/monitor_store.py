"""Where monitoring results live in Redis: the latest report per model, alert start times, and
the retraining history the gateway, the CLI and Prometheus read.

- ``df:monitor:report:<model>``: the latest report (JSON, the ``GET /v1/monitoring`` body less
  ``retraining``);
- ``df:monitor:since:<model>``: hash ``version|kind|window`` -> when that alert started;
- ``df:monitor:retrain:<model>``: list of retraining outcomes, newest first (at most 50);
- ``df:monitor:retrain-state:<model>``: the retrain watermark as kept before store ids (now in
  the prediction log itself, ``digitflow.predlog_state``): read once, moved or dropped;
- ``df:monitor:retrain-lock:<model>``: held while a retrain is queued or running;
- ``df:monitor:retrain-claim:<token>``: taken by the first delivery of one retrain request;
- ``df:monitor:pruned:<model>``: the prediction log's input cut-off the last prune reached.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, cast

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from digitflow.keys import monitor as monitor_key
from digitflow.redis_client import claim

HISTORY = 50


def write_report(client: redis.Redis, report: dict[str, Any]) -> None:
    """Store ``report`` and stamp each alert with ``since``: when it was first seen (kept while it lasts)."""
    model = report["model"]
    key = monitor_key("since", model)
    known = {k.decode(): float(v) for k, v in cast(dict[bytes, bytes], client.hgetall(key)).items()}
    current: dict[str, float] = {}
    for version in report["versions"]:
        for alert in version["alerts"]:
            name = f"{version['version']}|{alert['kind']}|{alert['window']}"
            current[name] = known.get(name, report["generated_at"])
            alert["since"] = current[name]
    pipe = client.pipeline()
    pipe.delete(key)
    if current:
        pipe.hset(key, mapping=current)  # type: ignore[arg-type]
    pipe.set(monitor_key("report", model), json.dumps(report))
    pipe.execute()


def read_report(client: redis.Redis, model: str) -> dict[str, Any] | None:
    raw = cast(bytes | None, client.get(monitor_key("report", model)))
    return None if raw is None else cast(dict[str, Any], json.loads(raw))


def record_retrain(client: redis.Redis, model: str, outcome: dict[str, Any]) -> None:
    key = monitor_key("retrain", model)
    client.lpush(key, json.dumps(outcome, default=str))
    client.ltrim(key, 0, HISTORY - 1)


def retrain_history(client: redis.Redis, model: str) -> list[dict[str, Any]]:
    """Retraining outcomes, oldest first."""
    raw = cast(list[bytes], client.lrange(monitor_key("retrain", model), 0, HISTORY - 1))
    return [json.loads(r) for r in reversed(raw)]


def legacy_retrain_states(client: redis.Redis) -> dict[str, tuple[int, float]]:
    """model -> (last row id, when) of the Redis watermarks written before it moved into the log."""
    out = {}
    prefix = monitor_key("retrain-state", "")
    for key in client.scan_iter(match=prefix + "*", count=500):
        raw = cast(dict[bytes, bytes], client.hgetall(key))
        if raw:
            out[key.decode().removeprefix(prefix)] = (int(raw.get(b"last_id", b"0")), float(raw.get(b"at", b"0")))
    return out


def drop_legacy_retrain_state(client: redis.Redis, model: str) -> None:
    client.delete(monitor_key("retrain-state", model))


def _retrain_lock(client: redis.Redis, model: str, ttl_s: float = 3600) -> Lock:
    # thread_local=False: the monitor takes the lock and the training worker releases it by token.
    return client.lock(monitor_key("retrain-lock", model), timeout=ttl_s, thread_local=False)


def take_retrain_lock(client: redis.Redis, model: str, token: str, ttl_s: int = 3600) -> bool:
    """Hold ``model``'s retrain lock as ``token`` (the retrain request's id); False if held."""
    return bool(_retrain_lock(client, model, ttl_s).acquire(blocking=False, token=token))


def claim_retrain(client: redis.Redis, token: str, ttl_s: int = 86400) -> bool:
    """True for the first delivery of the retrain request ``token``, False for any copy.

    Redis redelivers a message still unacknowledged after the visibility timeout, and with the
    solo pool even an early acknowledgement waits for the task to end: a retrain longer than
    VISIBILITY_TIMEOUT_S comes back once it finishes. The claim makes that copy a no-op.
    """
    return claim(client, monitor_key("retrain-claim", token), ttl_s)


def release_retrain_lock(client: redis.Redis, model: str, token: str) -> None:
    """Release the lock if ``token`` still holds it (never a newer request's lock)."""
    # LockError: expired, or a newer request holds it: not ours to release.
    with contextlib.suppress(LockError):
        _retrain_lock(client, model).do_release(token)


def pruned_until(client: redis.Redis, model: str) -> float:
    raw = cast(bytes | None, client.get(monitor_key("pruned", model)))
    return 0.0 if raw is None else float(raw)


def set_pruned_until(client: redis.Redis, model: str, at: float) -> None:
    client.set(monitor_key("pruned", model), repr(at))
