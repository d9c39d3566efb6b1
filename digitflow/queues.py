"""Queue depth, oldest-message age and work (waiting + in flight) per queue, read straight
from the broker.

The gateway exports these and uses the depth to shed load. Celery's Redis transport LPUSHes new
messages and BRPOPs from the right, so the oldest message is at index -1. Each batch message
carries the ``sent_at`` of when it entered its queue.

A message a worker has taken (prefetched or running; we ack late) is no longer in the list:
kombu keeps it in the ``unacked`` hash, ``delivery tag -> json [message, exchange, routing
key]``, until the ack. :func:`queue_work` adds those per queue, which is what an autoscaler
must see (docs/kubernetes.md, "Scaling").
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack
import redis

from digitflow.tasks import MONITOR_QUEUE, QUEUE_OF_STAGE, REGISTRY_QUEUE, TRAINING_QUEUE, inference_queue

# kombu's Redis transport: the unacked hash, and the list suffixes of its priority steps
# (``<queue>\x06\x16<n>``; priority 0 is the bare name). We send no priorities, but a message
# with one would sit in such a list.
UNACKED = "unacked"
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
# Counts the unacked entries per routing key inside Redis: the payloads (a batch message can be
# tens of kB) never cross the wire. The routing key is the last JSON string of each entry; our
# routing keys are queue names, which hold no quote.
_UNACKED_PER_QUEUE = """
local counts = {}
for _, entry in ipairs(redis.call('HVALS', KEYS[1])) do
  local key = string.match(entry, '"([^"]*)"%s*%]%s*$')
  if key then counts[key] = (counts[key] or 0) + 1 end
end
local out = {}
for key, n in pairs(counts) do out[#out + 1] = key; out[#out + 1] = n end
return out
"""


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


def all_queues(dedicated_models: Iterable[str] = ()) -> list[str]:
    """Every queue of digitflow/tasks.py, with the dedicated ``inference.<model>`` queues."""
    dedicated = list(dedicated_models)
    extra = [inference_queue(model, dedicated) for model in dedicated]
    return [*QUEUE_OF_STAGE.values(), *extra, REGISTRY_QUEUE, MONITOR_QUEUE, TRAINING_QUEUE]


def _counts(flat: list[bytes | int]) -> dict[str, int]:
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(n) for k, n in pairs}


def unacked_per_queue(client: redis.Redis) -> dict[str, int]:
    """Messages delivered to a worker and not yet acknowledged, per routing key (= queue)."""
    return _counts(client.eval(_UNACKED_PER_QUEUE, 1, UNACKED))


def queue_work(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Per queue: messages waiting in its lists plus those held unacknowledged by workers.

    One MULTI: the LLENs of every priority list and the unacked count read one consistent
    snapshot, so a message kombu restores from ``unacked`` to its list is counted once. (kombu
    records a message in ``unacked`` just after popping it, so for that instant it is in
    neither: a scrape may rarely read one message low.)
    """
    queues = list(queues)
    pipe = client.pipeline(transaction=True)
    for queue in queues:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    pipe.eval(_UNACKED_PER_QUEUE, 1, UNACKED)
    answers = pipe.execute()
    held = _counts(answers[-1])
    steps = len(PRIORITY_SUFFIXES)
    return {q: sum(answers[i * steps : (i + 1) * steps]) + held.get(q, 0) for i, q in enumerate(queues)}
