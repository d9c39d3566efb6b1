"""The registry's model view (``df:models`` in Redis), cached per gateway process.

Reading it on every submission cost a Redis round trip per request. The view changes only when
a model or version is registered or an alias moves, so a copy at most ``max_age_s`` old is
enough; a name or pinned version not in the copy triggers one immediate re-read, so a model
registered a moment ago is never refused.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from digitflow.model_view import read_view


class ModelViewCache:
    def __init__(self, client: redis.Redis, max_age_s: float = 1.0) -> None:
        self.client = client
        self.max_age_s = max_age_s
        self._view: dict[str, dict[str, Any]] = {}
        self._at = float("-inf")
        self._lock = threading.Lock()

    def get(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """The view; re-read from Redis when older than ``max_age_s`` or when ``refresh``."""
        with self._lock:
            if refresh or time.monotonic() - self._at > self.max_age_s:
                self._view = read_view(self.client)
                self._at = time.monotonic()
            return self._view
