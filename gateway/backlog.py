"""The batcher's backlog, mirrored in Redis, so a gateway that dies loses no accepted job.

A job is listed in this gateway's ``df:backlog:<gateway>`` zset in the same atomic step that
creates its record (JobStore.create; the record keeps the job's pipeline item), and leaves it
when its batch is handed to the broker (or failed). Every gateway beats in ``df:gateways``
once a second from its maintenance loop; when one misses beats for ``DEAD_AFTER_S``, the first
live gateway to look adopts its backlog in one Lua script (atomic, so two gateways never both
take it: no lock is needed) and dispatches the jobs still ``queued``. A job already sent whose
removal was lost is at worst run twice, and the job store records exactly one result.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import cast

import redis

from digitflow.keys import BACKLOG_PREFIX, GATEWAYS, JOB_PREFIX
from digitflow.messages import Item

DEAD_AFTER_S = 4.0  # five missed beats (one a second)

# KEYS[1]: gateways zset, KEYS[2]: the adopter's backlog. ARGV: adopter id, cutoff (beats older
# are dead), backlog prefix, job prefix, now. Returns the items of the adopted jobs still queued.
_ADOPT_LUA = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local items = {}
for _, gateway in ipairs(dead) do
  if gateway ~= ARGV[1] then
    local key = ARGV[3] .. gateway
    for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      local fields = redis.call('HMGET', ARGV[4] .. id, 'status', 'item')
      if fields[1] == 'queued' and fields[2] then
        redis.call('ZADD', KEYS[2], ARGV[5], id)
        items[#items + 1] = fields[2]
      end
    end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], gateway)
  end
end
return items
"""


class Backlog:
    """This gateway process's share of the accepted-but-unsent jobs in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.gateway_id = uuid.uuid4().hex[:16]
        self.key = BACKLOG_PREFIX + self.gateway_id
        self._adopt = client.register_script(_ADOPT_LUA)
        self._registered = False

    def entries(self, items: Sequence[Item]) -> tuple[str, list[str]]:
        """What JobStore.create lists for ``items``: this backlog's key and each item's JSON.

        The first call registers this gateway, so a backlog never exists without a beat that
        can go stale."""
        if not self._registered:
            self.beat()
        return self.key, [json.dumps(item, separators=(",", ":")) for item in items]

    def sent(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self.redis.zrem(self.key, *job_ids)

    def beat(self) -> None:
        self.redis.zadd(GATEWAYS, {self.gateway_id: time.time()})
        self._registered = True

    def adopt(self) -> list[Item]:
        """Take over the backlogs of gateways dead for DEAD_AFTER_S; their queued jobs' items."""
        now = time.time()
        raw = cast(
            list[bytes],
            self._adopt(
                keys=[GATEWAYS, self.key], args=[self.gateway_id, now - DEAD_AFTER_S, BACKLOG_PREFIX, JOB_PREFIX, now]
            ),
        )
        return [cast(Item, json.loads(entry)) for entry in raw]

    def leave(self) -> None:
        """A clean stop: keep the backlog, but let a live gateway adopt it at once."""
        self.redis.zadd(GATEWAYS, {self.gateway_id: 0})
