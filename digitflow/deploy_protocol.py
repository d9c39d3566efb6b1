"""The deploy protocol between the registry service and the inference processes.

A promotion is pushed on ``df:deploy`` as ``{name, version, id, phase}`` with phase ``prepare``
(load it next to the current version), ``commit`` (serve it) or ``abort`` (drop it). Each
inference process answers each phase in the hash ``df:deploy:<id>:<phase>``, one field per
process. Inference processes beat in ``df:workers:model-servers`` (``SERVERS``), so that a
promotion knows whom to wait for. The registry side is ``registry_worker.deploy``; the
inference side ``inference_worker.deploy_watcher``.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from digitflow.keys import DEPLOY_ACKS_PREFIX, DEPLOY_CHANNEL

# The heartbeat "stage" of inference processes (digitflow.heartbeat layout).
SERVERS = "model-servers"
ACKS_TTL_S = 3600
__all__ = ["DEPLOY_CHANNEL", "SERVERS", "publish_deploy", "read_acks", "write_ack"]


def publish_deploy(client: redis.Redis, name: str, version: str, deploy_id: str, phase: str = "commit") -> int:
    """Tell every inference process to ``prepare`` (load), ``commit`` (serve) or ``abort`` ``version``
    of ``name``; returns how many listeners it reached."""
    message = {"name": name, "version": version, "id": deploy_id, "phase": phase}
    return int(cast(int, client.publish(DEPLOY_CHANNEL, json.dumps(message))))


def write_ack(client: redis.Redis, deploy_id: str, server: str, ack: dict[str, Any]) -> None:
    key = DEPLOY_ACKS_PREFIX + deploy_id
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, server, json.dumps(ack))
    pipe.expire(key, ACKS_TTL_S)
    pipe.execute()


def read_acks(client: redis.Redis, deploy_id: str) -> dict[str, dict[str, Any]]:
    raw = cast(dict[bytes, bytes], client.hgetall(DEPLOY_ACKS_PREFIX + deploy_id))
    return {k.decode(): json.loads(v) for k, v in raw.items()}
