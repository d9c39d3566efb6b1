"""The registry's view in Redis: what the gateway and the workers read instead of MLflow.

The registry service (``registry_worker``) is the only writer. ``df:models`` is a hash of model
name -> JSON entry (versions with their input profile, labels and metrics; aliases; production
history; the last deploy), and ``df:models:production`` maps name -> ``version|deploy_id`` for
the inference processes' cheap periodic check. Nothing here imports MLflow or torch.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from digitflow.keys import MODELS_PRODUCTION, MODELS_VIEW
from digitflow.model_spec import production_of


def read_entry(client: redis.Redis, name: str) -> dict[str, Any] | None:
    raw = cast(bytes | None, client.hget(MODELS_VIEW, name))
    return json.loads(raw) if raw else None


def read_view(client: redis.Redis) -> dict[str, dict[str, Any]]:
    raw = cast(dict[bytes, bytes], client.hgetall(MODELS_VIEW))
    return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}


def read_production(client: redis.Redis) -> dict[str, tuple[str, str]]:
    """name -> (production version, id of the deploy that put it there)."""
    raw = cast(dict[bytes, bytes], client.hgetall(MODELS_PRODUCTION))
    out = {}
    for name, value in raw.items():
        version, _, deploy_id = value.decode().partition("|")
        out[name.decode()] = (version, deploy_id)
    return out


def write_entries(client: redis.Redis, entries: list[dict[str, Any]], replace: bool = False) -> None:
    """Store entries (and their production pointers); ``replace`` drops models not listed."""
    pipe = client.pipeline(transaction=True)
    if replace:
        pipe.delete(MODELS_VIEW, MODELS_PRODUCTION)
    for entry in entries:
        entry = {**entry, "updated_at": time.time()}
        pipe.hset(MODELS_VIEW, entry["name"], json.dumps(entry))
        production = production_of(entry)
        if production is None:
            pipe.hdel(MODELS_PRODUCTION, entry["name"])
        else:
            deploy_id = (entry.get("deploy") or {}).get("id", "")
            pipe.hset(MODELS_PRODUCTION, entry["name"], f"{production}|{deploy_id}")
    pipe.execute()
