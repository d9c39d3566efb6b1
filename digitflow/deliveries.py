"""Who holds each delivered-but-unacknowledged message, and handing a dead holder's messages on.

kombu's Redis transport lists a message it delivered in ``unacked`` (tag -> message, exchange,
routing key) and ``unacked_index`` (tag -> when), and gives it to another consumer only after
``visibility_timeout``: it cannot tell a dead consumer from a slow one (celery/celery#4984 is
that question, still answered "lower the visibility timeout"). digitflow adds the missing
piece, an owner per delivery:

* every consuming process is an *owner* (``owner_id()``: host, pid, a random suffix). Its
  deliveries are listed in ``df:deliveries`` (tag -> owner) in the same MULTI as kombu's own
  bookkeeping (``digitflow/broker.py``), and it beats in ``df:owners`` (owner -> last beat)
  every ``lease_s / 4`` from a :class:`DeliveryKeeper` thread, over a Redis connection named
  after it;
* an owner is dead when it has not beaten for ``lease_s``, or sooner, once it has missed a
  beat and Redis lists no connection with its name (a process killed with ``kill -9`` has its
  sockets closed by the kernel; a stopped or cut-off one keeps them, and waits out the lease);
* every keeper also looks for dead owners. One Lua script makes the first keeper that finds
  one the owner of its deliveries (atomic: no two keepers take the same tag), then the keeper
  pushes each back to the front of its queue through kombu's own restore, guarded so that a
  tag is pushed only while its caller owns it and it is still unacknowledged: exactly once;
* an acknowledgement only removes a tag its own process still owns, so a worker that comes
  back after its deliveries were handed on cannot drop the new holder's bookkeeping.

What the Lua claim cannot undo is a process that was only paused: it may still finish its
batch. The job record's fence (``digitflow/jobs.py``) refuses that process's writes.
Clocks: beats are the owners' wall clocks, compared with the keeper's, as every heartbeat in
digitflow is; hosts must agree within a fraction of ``lease_s`` (NTP).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import cast

import redis

from digitflow.keys import DELIVERIES, DELIVERY_OWNERS
from digitflow.observability import log_event

logger = logging.getLogger("digitflow.deliveries")
CONNECTION_PREFIX = "df-owner-"  # CLIENT SETNAME of a keeper's connections: the owner's name
_owner: tuple[int, str] | None = None

# KEYS[1]: owners zset, KEYS[2]: deliveries hash. ARGV[1]: the claimer, then pairs (owner, the
# beat the claimer saw). An owner that has not beaten since is dead: its deliveries become the
# claimer's and it leaves the zset. Returns the tags claimed.
_CLAIM_LUA = """
local dead, any = {}, false
for i = 2, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not score or tonumber(score) <= tonumber(ARGV[i + 1]) then
    dead[ARGV[i]] = true
    any = true
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
local tags = {}
if not any then return tags end
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  if dead[held[i + 1]] then
    redis.call('HSET', KEYS[2], held[i], ARGV[1])
    tags[#tags + 1] = held[i]
  end
end
return tags
"""


def owner_id() -> str:
    """This process's owner name (a forked child gets its own)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}-{pid}-{secrets.token_hex(3)}")
    return _owner[1]


def dead_owners(client: redis.Redis, me: str, lease_s: float) -> dict[str, float]:
    """Owners (not ``me``) that hold deliveries or are listed, and are dead: owner -> the beat
    seen (-1 when none). Lists Redis's connections only when an owner has missed a beat."""
    pipe = client.pipeline(transaction=False)
    pipe.hvals(DELIVERIES)
    pipe.zrange(DELIVERY_OWNERS, 0, -1, withscores=True)
    holders_raw, beats_raw = pipe.execute()
    beats = {name.decode(): float(score) for name, score in beats_raw}
    holders = {h.decode() for h in holders_raw}
    now, grace = time.time(), lease_s / 4 * 1.5
    late = {o: beats.get(o, -1.0) for o in holders | set(beats) if o != me and now - beats.get(o, -1.0) > grace}
    if not late:
        return {}
    expired = {o: b for o, b in late.items() if now - b >= lease_s}
    unsure = [o for o in late if o not in expired and o in holders]
    if unsure:
        connected = {c.get("name", "") for c in client.client_list(_type="normal")}
        expired.update({o: late[o] for o in unsure if CONNECTION_PREFIX + o not in connected})
    return expired


class DeliveryKeeper:
    """Beats for this process's deliveries and hands dead owners' deliveries on.

    ``restore(tags)`` pushes tags this process now owns back to their queues (kombu's restore,
    ``digitflow/broker.py``); it returns how many it pushed.
    """

    def __init__(self, url: str, lease_s: float, restore: Callable[[Iterable[str]], int], service: str = "") -> None:
        self.me = owner_id()
        self.lease_s, self.interval_s = lease_s, lease_s / 4
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=max(1.0, self.interval_s),
            client_name=CONNECTION_PREFIX + self.me,
        )
        self._restore, self.service = restore, service
        self._claim = self.client.register_script(_CLAIM_LUA)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-keeper", daemon=True)
        self._steady_since: float | None = None

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        self.client.zadd(DELIVERY_OWNERS, {self.me: time.time()})

    def hand_on(self) -> int:
        """Claim and restore the deliveries of dead owners; how many were pushed back."""
        dead = dead_owners(self.client, self.me, self.lease_s)
        if not dead:
            return 0
        args: list[str | float] = [self.me]
        for owner, seen in dead.items():
            args += [owner, seen]
        tags = [t.decode() for t in cast(list[bytes], self._claim(keys=[DELIVERY_OWNERS, DELIVERIES], args=args))]
        pushed = self._restore(tags) if tags else 0
        if tags:
            log_event(
                logger,
                "deliveries_handed_on",
                logging.WARNING,
                service=self.service,
                owners=sorted(dead),
                tags=len(tags),
                restored=pushed,
            )
        return pushed

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            if now - last > self.lease_s:
                self._steady_since = None  # this process was paused: others may have taken its work
            last = now
            try:
                self.beat()
                if self._steady_since is None:
                    self._steady_since = now
                # Only a keeper that has itself been beating for a whole lease judges others:
                # after a Redis restart or its own pause, every beat it sees may be old.
                elif now - self._steady_since >= self.lease_s:
                    self.hand_on()
            except redis.RedisError as exc:
                self._steady_since = None
                logger.warning("delivery keeper: %s", exc, extra={"event": "delivery_keeper_failed"})

    def stop(self) -> None:
        """Leave the owners zset: deliveries still held (none after a warm shutdown, which
        restores them) are handed on by the next keeper that looks."""
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(DELIVERY_OWNERS, self.me)
        self.client.close()
