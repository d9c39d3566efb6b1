"""The batcher's backlog, mirrored in Redis, so a gateway that dies loses no accepted job.

A job is listed in this gateway's ``df:backlog:<gateway>`` zset in the same atomic step that
creates its record (JobStore.create; the record keeps the job's pipeline item), and leaves it
when its batch is handed to the broker (or failed). Every gateway beats in ``df:gateways``
once a second from its maintenance loop; when one misses beats for ``DEAD_AFTER_S``, the first
live gateway to look adopts its backlog in one Lua script (atomic, so two gateways never both
take it: no lock is needed) and dispatches the jobs still ``queued``. A job already sent whose
removal was lost is at worst run twice, and the job store records exactly one result.

A job already handed to the broker can still be lost there: kombu's Redis transport takes a
message off its queue (BRPOP) before it lists it as unacknowledged, so a worker killed between
the two, or a Redis restart that loses the last second of its append-only file, leaves a job
that no worker holds and no visibility timeout brings back. ``reclaim_stalled`` (the gateway's
sweep) sends such a job again, once, from the start of the chain: its upload stays parked until
the job ends, and every stage is idempotent.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import cast

import redis

from digitflow.keys import ACTIVE_JOBS, BACKLOG_PREFIX, GATEWAYS, JOB_PREFIX
from digitflow.messages import Item
from digitflow.tasks import STAGES

DEAD_AFTER_S = 4.0  # five missed beats (one a second)
_STAGE_STARTS = [f"t:{stage}:start" for stage in STAGES]  # as JobStore.start_stage writes them

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

# KEYS[1]: active jobs zset (score: accepted at), KEYS[2]: gateways zset, KEYS[3]: the caller's
# backlog. ARGV: cutoff (no progress since is stalled), backlog prefix, job prefix, now, limit,
# then the job record's stage-start fields.
# A job is stalled when it is unfinished, was never sent again, is in no gateway's backlog
# (those are still to be sent) and neither its acceptance nor any stage's start is newer than
# the cutoff. Marks each ``redispatched`` and lists it in the caller's backlog; returns, per job,
# its item and its fence (digitflow/jobs.py: the new message must carry it, or no stage would
# claim the job from the delivery that held it last).
_RECLAIM_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[5]))
if #ids == 0 then return {} end
local gateways = redis.call('ZRANGE', KEYS[2], 0, -1)
local cutoff = tonumber(ARGV[1])
local function in_a_backlog(id)
  for _, gateway in ipairs(gateways) do
    if redis.call('ZSCORE', ARGV[2] .. gateway, id) then return true end
  end
  return false
end
local items = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[3] .. id, 'status', 'item', 'redispatched', 'fence', 'created_at', unpack(ARGV, 6))
  if f[1] and f[1] ~= 'succeeded' and f[1] ~= 'failed' and f[2] and not f[3] then
    local last = 0
    for i = 5, #f do
      local t = tonumber(f[i])
      if t and t > last then last = t end
    end
    if last < cutoff and not in_a_backlog(id) then
      redis.call('HSET', ARGV[3] .. id, 'redispatched', ARGV[4])
      redis.call('ZADD', KEYS[3], ARGV[4], id)
      items[#items + 1] = f[2]
      items[#items + 1] = f[4] or ''
    end
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
        self._reclaim = client.register_script(_RECLAIM_LUA)
        self._registered = False
        self._lock = threading.Lock()
        self._untrimmed: list[str] = []  # sent, but their removal met no Redis (``sent``)

    def entries(self, items: Sequence[Item]) -> tuple[str, list[str]]:
        """What JobStore.create lists for ``items``: this backlog's key and each item's JSON.

        The first call registers this gateway, so a backlog never exists without a beat that
        can go stale."""
        if not self._registered:
            self.beat()
        return self.key, [json.dumps(item, separators=(",", ":")) for item in items]

    def sent(self, job_ids: Sequence[str]) -> None:
        """The jobs left for the broker: they leave the backlog. Ids whose removal met no Redis
        are removed at the next beat: left listed, they would shield jobs the broker lost (a
        Redis restart under load) from ``reclaim_stalled`` until their deadline."""
        with self._lock:
            pending, self._untrimmed = [*self._untrimmed, *job_ids], []
            if not pending:
                return
            try:
                self.redis.zrem(self.key, *pending)
            except redis.RedisError:
                self._untrimmed = pending
                raise

    def beat(self) -> None:
        self.redis.zadd(GATEWAYS, {self.gateway_id: time.time()})
        self._registered = True
        if self._untrimmed:
            self.sent(())

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

    def reclaim_stalled(self, stalled_s: float, limit: int = 200) -> list[Item]:
        """Take over the unfinished jobs with no progress for ``stalled_s`` that no backlog holds
        and that were never sent again (see the module's docstring); their items, to send."""
        now = time.time()
        raw = cast(
            list[bytes],
            self._reclaim(
                keys=[ACTIVE_JOBS, GATEWAYS, self.key],
                args=[now - stalled_s, BACKLOG_PREFIX, JOB_PREFIX, now, limit, *_STAGE_STARTS],
            ),
        )
        items = []
        for entry, fence in zip(raw[::2], raw[1::2], strict=True):
            item = cast(Item, json.loads(entry))
            if fence:
                item["fence"] = fence.decode()
            items.append(item)
        return items

    def leave(self) -> None:
        """A clean stop: keep the backlog, but let a live gateway adopt it at once."""
        self.redis.zadd(GATEWAYS, {self.gateway_id: 0})
