"""Worker liveness in Redis, so the gateway's readiness can say which stage has no worker.

Each worker's main process refreshes its entry in a sorted set per stage
(``df:workers:<stage>``, score = last beat). A worker is alive while its last beat is younger
than the TTL; ``kill -9`` therefore shows up within one TTL.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable

import redis

from digitflow.keys import PROCESSES_PREFIX, workers
from digitflow.tasks import STAGES

logger = logging.getLogger("digitflow.heartbeat")


class Heartbeat:
    def __init__(self, client: redis.Redis, stage: str, name: str, interval_s: float, processes: int = 1) -> None:
        self.client, self.stage, self.name, self.interval_s = client, stage, name, interval_s
        self.processes = processes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{stage}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(workers(self.stage), {self.name: time.time()})
        pipe.hset(PROCESSES_PREFIX + self.stage, self.name, self.processes)
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis away: keep trying, readiness will say so
                logger.warning("heartbeat failed: %s", exc, extra={"event": "heartbeat_failed"})
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(workers(self.stage), self.name)
            self.client.hdel(PROCESSES_PREFIX + self.stage, self.name)


def live_workers(client: redis.Redis, ttl_s: float, stages: Iterable[str] = STAGES) -> dict[str, list[str]]:
    """Names of the workers of each stage that beat within ``ttl_s``."""
    cutoff = time.time() - ttl_s
    pipe = client.pipeline(transaction=False)
    stages = list(stages)
    for stage in stages:
        pipe.zremrangebyscore(workers(stage), "-inf", cutoff)
        pipe.zrange(workers(stage), 0, -1)
    answers = pipe.execute()
    return {stage: sorted(n.decode() for n in answers[2 * i + 1]) for i, stage in enumerate(stages)}


def live_processes(client: redis.Redis, ttl_s: float, stage: str) -> int:
    """Pool processes of ``stage`` across its live workers (0 when none is alive)."""
    names = live_workers(client, ttl_s, [stage])[stage]
    if not names:
        return 0
    sizes = client.hmget(PROCESSES_PREFIX + stage, names)
    return sum(int(size) if size else 1 for size in sizes)
