"""Redis clients with short timeouts: a request must fail fast (503) rather than hang."""

from __future__ import annotations

import redis


def connect(url: str, socket_timeout: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry_on_timeout=False,
    )


def is_reachable(url: str) -> bool:
    try:
        return bool(connect(url, socket_timeout=1.0).ping())
    except redis.RedisError:
        return False


def claim(client: redis.Redis, key: str, ttl_s: float) -> bool:
    """True for the first caller to claim ``key`` within ``ttl_s``, False for every later one.

    A claim is a once-only marker (a request already handled, a sweep already run this
    interval), never released: it expires. Mutual exclusion that is released when the work
    ends uses redis-py's ``Lock`` instead (token-checked release in Lua).
    """
    return bool(client.set(key, "1", nx=True, px=max(1, int(ttl_s * 1000))))
