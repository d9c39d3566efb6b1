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
