"""How full Redis is, read from ``INFO memory``, so the gateway stops accepting jobs before
Redis does.

Compose runs Redis with ``maxmemory`` and ``noeviction`` (docs/reliability.md, "Redis full"):
at the limit Redis refuses ordinary writes, and some of those a stage cannot recover from
(kombu's bookkeeping of a message it just took off a queue). New jobs are what fills Redis
(each parks its image), so the gateway answers 429 above ``REDIS_MEMORY_HIGH_WATER`` of
``maxmemory``: the jobs already accepted keep the headroom to finish, and each that finishes
frees its image.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import redis


class MemoryGauge:
    """``used_memory`` against ``maxmemory`` of one Redis, read at most every ``max_age_s`` (the
    check runs on every submission). Between two reads it adds the bytes it admitted itself,
    so a burst of uploads cannot all pass on one stale reading."""

    def __init__(self, client: redis.Redis, max_age_s: float = 0.1) -> None:
        self.client = client
        self.max_age_s = max_age_s
        self._at = -1e9
        self._used = self._limit = self._admitted = 0
        self._lock = threading.Lock()

    def admits(self, incoming: int, high_water: float) -> bool:
        """Whether ``incoming`` more bytes keep Redis under ``high_water`` of its maxmemory
        (always, when it has none); counts them if so. Raises redis errors as they come (the
        gateway's error handler answers 503)."""
        with self._lock:
            if time.monotonic() - self._at > self.max_age_s:
                info = cast(dict[str, Any], self.client.info("memory"))
                self._used, self._limit = int(info.get("used_memory") or 0), int(info.get("maxmemory") or 0)
                self._admitted, self._at = 0, time.monotonic()
            if not self._limit:
                return True
            if self._used + self._admitted + incoming > high_water * self._limit:
                return False
            self._admitted += incoming
            return True
