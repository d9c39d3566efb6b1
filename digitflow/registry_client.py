"""Asking the registry service to do something, by task name, and waiting for its answer.

Celery stores no results in digitflow, so the registry service writes each answer to a Redis
list named after the request (``df:registry:reply:<id>``) and the caller blocks on it (BLPOP),
bounded. Used by the gateway (``POST /v1/models/<name>/promote``) and by ``digitflow models``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

import redis
from celery import Celery

from digitflow.errors import RegistryUnavailableError, error_from_dict
from digitflow.heartbeat import live_workers
from digitflow.keys import REGISTRY_REPLY_PREFIX
from digitflow.redis_client import connect
from digitflow.tasks import REGISTRY_QUEUE

REGISTRY_STAGE = "registry"  # its heartbeats: df:workers:registry


class RegistryClient:
    def __init__(self, celery: Celery, redis_url: str, heartbeat_ttl_s: float) -> None:
        self.celery, self.redis_url, self.heartbeat_ttl_s = celery, redis_url, heartbeat_ttl_s

    def alive(self) -> bool:
        """Whether a registry service beat within the heartbeat TTL."""
        client = connect(self.redis_url, socket_timeout=2.0)
        try:
            return bool(live_workers(client, self.heartbeat_ttl_s, [REGISTRY_STAGE])[REGISTRY_STAGE])
        finally:
            client.close()

    def call(self, task: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send ``task`` with ``payload`` and return the service's outcome.

        Raises RegistryUnavailableError when no registry service is alive or none answered
        within ``timeout_s``, and the service's own error (rebuilt from its code) when it failed.
        """
        if not self.alive():
            raise RegistryUnavailableError("no registry service is running (celery -A registry_worker.worker:app)")
        request_id = uuid.uuid4().hex
        self.celery.send_task(task, args=({**payload, "request_id": request_id},), queue=REGISTRY_QUEUE)
        client = connect(self.redis_url, socket_timeout=timeout_s + 5)
        try:
            answer = wait_reply(client, request_id, timeout_s)
        finally:
            client.close()
        if answer is None:
            raise RegistryUnavailableError(
                f"the registry service did not answer within {timeout_s:g} s", retry_after=5, request_id=request_id
            )
        if not answer.get("ok"):
            raise error_from_dict(answer.get("error") or {})
        return dict(answer.get("result") or {})


def send_reply(client: redis.Redis, request_id: str, outcome: dict[str, Any], ttl_s: int = 600) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.rpush(REGISTRY_REPLY_PREFIX + request_id, json.dumps(outcome))
    pipe.expire(REGISTRY_REPLY_PREFIX + request_id, ttl_s)
    pipe.execute()


def wait_reply(client: redis.Redis, request_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The registry's answer to ``request_id``, or None after ``timeout_s``. The client's socket
    timeout must exceed ``timeout_s``."""
    answer = client.blpop([REGISTRY_REPLY_PREFIX + request_id], timeout=max(1, round(timeout_s)))
    if answer is None:
        return None
    return cast(dict[str, Any], json.loads(cast(tuple[bytes, bytes], answer)[1]))
