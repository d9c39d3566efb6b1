"""Finished-job notifications for this gateway process: one Redis pub/sub connection.

Stages publish the ids of jobs they finish on ``df:done``. One listener thread per process
wakes the requests long-polling those jobs (``?wait=``, ``Prefer: wait``) and frees the
batcher's in-flight slots. A missed message (Redis restarted) costs nothing worse than a
re-read: waiters re-check the job record at least every ``recheck_s``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import redis

from digitflow.keys import DONE_CHANNEL

logger = logging.getLogger("gateway.completions")


class CompletionListener:
    def __init__(self, client: redis.Redis, on_done: Callable[[Iterable[str]], None] | None = None) -> None:
        self.client = client
        self.on_done = on_done
        self._waiters: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="completions", daemon=True)
                self._thread.start()

    def register(self, job_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append(event)
        return event

    def unregister(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(job_id)
            if events is not None:
                if event in events:
                    events.remove(event)
                if not events:
                    del self._waiters[job_id]

    def _dispatch(self, job_ids: list[str]) -> None:
        if self.on_done is not None:
            self.on_done(job_ids)
        with self._lock:
            for job_id in job_ids:
                for event in self._waiters.get(job_id, ()):
                    event.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(DONE_CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"].decode().split(","))
            except (redis.RedisError, OSError) as exc:
                logger.warning("completion listener lost Redis: %s", exc, extra={"event": "listener_reconnect"})
                time.sleep(0.5)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()

    def stop(self) -> None:
        self._stop.set()
