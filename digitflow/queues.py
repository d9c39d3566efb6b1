"""Queue depth and oldest-message age per stage queue, read straight from the broker.

Flower does not export queue depth; the gateway does, and uses it to shed load. Celery's Redis
transport LPUSHes new messages and BRPOPs from the right, so the oldest message is at index -1.
Each batch message carries the ``sent_at`` of when it entered its queue.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack
import redis

from digitflow.tasks import QUEUE_OF_STAGE


@dataclass(frozen=True)
class QueueStats:
    queue: str
    depth: int
    oldest_age_s: float


def _sent_at(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        envelope = json.loads(raw)
        body = base64.b64decode(envelope["body"])
        args = msgpack.unpackb(body, raw=False)[0]
        return float(args[0]["sent_at"])
    except (ValueError, KeyError, IndexError, TypeError, msgpack.UnpackException):
        return None  # a message we did not write (or a foreign one): no age to report


def queue_stats(client: redis.Redis, queues: Iterable[str] = QUEUE_OF_STAGE.values()) -> list[QueueStats]:
    queues = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        pipe.lindex(queue, -1)
    answers = pipe.execute()
    now = time.time()
    stats = []
    for i, queue in enumerate(queues):
        depth, oldest = answers[2 * i], _sent_at(answers[2 * i + 1])
        stats.append(QueueStats(queue, int(depth), max(0.0, now - oldest) if oldest and depth else 0.0))
    return stats
