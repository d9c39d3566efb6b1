"""The registry's view in Redis: what the gateway and the workers read instead of MLflow.

The registry service (``registry_worker``) is the only writer. ``df:models`` is a hash of model
name -> JSON entry (versions with their input profile, labels and metrics; aliases; production
history; the last deploy), and ``df:models:production`` maps name -> ``version|deploy_id`` for
the inference processes' cheap periodic check. A promotion is pushed on ``df:deploy``; each
inference process answers each phase in ``df:deploy:<id>:<phase>`` (one field per process).
Nothing here imports MLflow or torch.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from digitflow.errors import InvalidRequestError, ModelVersionNotFoundError

VIEW_KEY = "df:models"
PRODUCTION_KEY = "df:models:production"
DEPLOY_CHANNEL = "df:deploy"
ACKS_PREFIX = "df:deploy:"
REPLY_PREFIX = "df:registry:reply:"
# Inference processes beat here (digitflow.heartbeat layout): each one that must confirm a deploy.
SERVERS = "model-servers"
PRODUCTION = "production"
CANDIDATE = "candidate"
ALIASES = (PRODUCTION, CANDIDATE)
DEFAULT_PROFILE = "digits-mnist"
ACKS_TTL_S = 3600
SPEC_RE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,63})(?:@([1-9][0-9]{0,8}))?$")


@dataclass(frozen=True)
class ModelSpec:
    """What a job asks for: ``digits`` (production) or ``digits@3`` (that version)."""

    name: str
    pin: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Raise InvalidRequestError unless ``text`` is ``name`` or ``name@version``."""
        match = SPEC_RE.match(text)
        if match is None:
            raise InvalidRequestError("model must be a lowercase name like 'digits' or 'digits@3'", model=text[:80])
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{self.name}@{self.pin}" if self.pin else self.name


def production_of(entry: dict[str, Any]) -> str | None:
    version = entry.get("aliases", {}).get(PRODUCTION)
    return str(version) if version is not None else None


def resolve(entry: dict[str, Any], pin: str | None) -> tuple[str, dict[str, Any]]:
    """The version serving ``pin`` (or production) and its record; ModelVersionNotFoundError if none."""
    version = pin or production_of(entry)
    record = entry.get("versions", {}).get(version) if version else None
    if version is None or record is None:
        what = f"version {pin}" if pin else "a production version"
        raise ModelVersionNotFoundError(
            f"model {entry.get('name')!r} has no {what}", model=entry.get("name"), available=sorted_versions(entry)
        )
    return version, record


def sorted_versions(entry: dict[str, Any]) -> list[str]:
    return sorted(entry.get("versions", {}), key=int)


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/models/<name>`` and ``digitflow models show`` print (no storage paths)."""
    versions = [
        {k: v for k, v in entry["versions"][ver].items() if k not in {"source", "run_id"}}
        for ver in sorted_versions(entry)
    ]
    return {
        "name": entry["name"],
        "aliases": entry.get("aliases", {}),
        "production": production_of(entry),
        "history": entry.get("history", []),
        "versions": versions,
        "last_deploy": entry.get("deploy"),
        "updated_at": entry.get("updated_at"),
    }


def read_entry(client: redis.Redis, name: str) -> dict[str, Any] | None:
    raw = cast(bytes | None, client.hget(VIEW_KEY, name))
    return json.loads(raw) if raw else None


def read_view(client: redis.Redis) -> dict[str, dict[str, Any]]:
    raw = cast(dict[bytes, bytes], client.hgetall(VIEW_KEY))
    return {k.decode(): json.loads(v) for k, v in sorted(raw.items())}


def read_production(client: redis.Redis) -> dict[str, tuple[str, str]]:
    """name -> (production version, id of the deploy that put it there)."""
    raw = cast(dict[bytes, bytes], client.hgetall(PRODUCTION_KEY))
    out = {}
    for name, value in raw.items():
        version, _, deploy_id = value.decode().partition("|")
        out[name.decode()] = (version, deploy_id)
    return out


def write_entries(client: redis.Redis, entries: list[dict[str, Any]], replace: bool = False) -> None:
    """Store entries (and their production pointers); ``replace`` drops models not listed."""
    pipe = client.pipeline(transaction=True)
    if replace:
        pipe.delete(VIEW_KEY, PRODUCTION_KEY)
    for entry in entries:
        entry = {**entry, "updated_at": time.time()}
        pipe.hset(VIEW_KEY, entry["name"], json.dumps(entry))
        production = production_of(entry)
        if production is None:
            pipe.hdel(PRODUCTION_KEY, entry["name"])
        else:
            deploy_id = (entry.get("deploy") or {}).get("id", "")
            pipe.hset(PRODUCTION_KEY, entry["name"], f"{production}|{deploy_id}")
    pipe.execute()


def publish_deploy(client: redis.Redis, name: str, version: str, deploy_id: str, phase: str = "commit") -> int:
    """Tell every inference process to ``prepare`` (load), ``commit`` (serve) or ``abort`` ``version``
    of ``name``; returns how many listeners it reached."""
    message = {"name": name, "version": version, "id": deploy_id, "phase": phase}
    return int(cast(int, client.publish(DEPLOY_CHANNEL, json.dumps(message))))


def write_ack(client: redis.Redis, deploy_id: str, server: str, ack: dict[str, Any]) -> None:
    key = ACKS_PREFIX + deploy_id
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, server, json.dumps(ack))
    pipe.expire(key, ACKS_TTL_S)
    pipe.execute()


def read_acks(client: redis.Redis, deploy_id: str) -> dict[str, dict[str, Any]]:
    raw = cast(dict[bytes, bytes], client.hgetall(ACKS_PREFIX + deploy_id))
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def send_reply(client: redis.Redis, request_id: str, outcome: dict[str, Any], ttl_s: int = 600) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.rpush(REPLY_PREFIX + request_id, json.dumps(outcome))
    pipe.expire(REPLY_PREFIX + request_id, ttl_s)
    pipe.execute()


def wait_reply(client: redis.Redis, request_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The registry's answer to ``request_id``, or None after ``timeout_s``. The client's socket
    timeout must exceed ``timeout_s``."""
    answer = client.blpop([REPLY_PREFIX + request_id], timeout=max(1, round(timeout_s)))
    if answer is None:
        return None
    return cast(dict[str, Any], json.loads(cast(tuple[bytes, bytes], answer)[1]))
