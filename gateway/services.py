"""The gateway's per-process collaborators: job store, batcher, completion listener, Celery.

The gateway starts chains by task name only; it never imports worker code or torch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis
from celery import Celery, chain

from digitflow.celery_app import make_celery
from digitflow.errors import DeadlineExceededError, DigitflowError, OverloadedError, ServiceUnavailableError
from digitflow.jobs import JobStore
from digitflow.messages import Item, make_batch
from digitflow.observability import BATCH_SIZE, log_event
from digitflow.queues import QueueStats, queue_stats
from digitflow.redis_client import connect
from digitflow.settings import GatewaySettings
from digitflow.tasks import INFERENCE, POSTPROCESS, PREPROCESS, QUEUE_OF_STAGE
from gateway.batcher import Batcher
from gateway.completions import CompletionListener

logger = logging.getLogger("gateway")
SWEEP_LOCK = "df:sweeper:lock"


@dataclass
class _QueueCache:
    at: float = 0.0
    stats: list[QueueStats] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class GatewayServices:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.redis = connect(settings.redis_url, socket_timeout=2.0)
        self.store = JobStore(self.redis, settings.job_ttl_s)
        self.celery: Celery = make_celery("gateway", settings)
        # Fail fast when the broker is away rather than hold the request thread.
        self.celery.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}
        self.batcher = Batcher(
            self._send_chain,
            batch_max=settings.batch_max,
            wait_s=settings.batch_wait_ms / 1000.0,
            max_in_flight=settings.batches_in_flight,
            on_send_error=self._fail_unsent,
        )
        # Its own connection with no read timeout: it blocks in pub/sub by design.
        self.listener = CompletionListener(connect(settings.redis_url, socket_timeout=None), self.batcher.finished)  # type: ignore[arg-type]
        self._queues = _QueueCache()
        self._sweeper: threading.Thread | None = None
        self._sweeper_lock = threading.Lock()

    def _send_chain(self, batch_id: str, items: list[Item]) -> None:
        BATCH_SIZE.labels("gateway").observe(len(items))
        batch = make_batch(batch_id, items)
        sig = self.celery.signature
        chain(
            sig(PREPROCESS, args=(batch,), queue=QUEUE_OF_STAGE["preprocess"]),
            sig(INFERENCE, queue=QUEUE_OF_STAGE["inference"]),
            sig(POSTPROCESS, queue=QUEUE_OF_STAGE["postprocess"]),
        ).apply_async()

    def _fail_unsent(self, items: list[Item], exc: Exception) -> None:
        err: DigitflowError = ServiceUnavailableError(f"the job could not be queued: {type(exc).__name__}")
        self.store.fail_unsent([item["job_id"] for item in items], err)

    def dispatch(self, items: list[Item]) -> None:
        self.ensure_started()
        self.batcher.submit(items)

    def ensure_started(self) -> None:
        """Background threads start in the process that serves requests (after gunicorn forks)."""
        self.listener.ensure_started()
        with self._sweeper_lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep_loop, name="deadline-sweeper", daemon=True)
                self._sweeper.start()

    def _sweep_loop(self) -> None:
        """Fail jobs past JOB_DEADLINE_S, so none stays queued forever; one sweeper at a time
        across all gateway processes (a Redis lock)."""
        interval = self.settings.sweep_interval_s
        while True:
            time.sleep(interval)
            try:
                if self.redis.set(SWEEP_LOCK, "1", nx=True, px=int(interval * 900)):
                    failed = self.store.fail_overdue(
                        self.settings.job_deadline_s,
                        lambda stage: DeadlineExceededError(
                            f"not finished within {self.settings.job_deadline_s} s (stuck at {stage})"
                        ),
                    )
                    if failed:
                        log_event(logger, "jobs_deadline_exceeded", logging.WARNING, count=len(failed), job_ids=failed)
            except redis.RedisError as exc:
                logger.warning("deadline sweep skipped: %s", exc, extra={"event": "sweep_skipped"})

    def check_overload(self) -> None:
        """Raise OverloadedError when waiting work or its age passes the configured limits."""
        limits = self.settings
        stats = self.queue_stats()
        waiting = self.batcher.pending + sum(s.depth for s in stats)
        oldest = max([self.batcher.oldest_wait_s, *(s.oldest_age_s for s in stats)])
        if waiting > limits.max_queue_depth or oldest > limits.max_queue_age_s:
            retry = max(1, min(30, round(oldest))) if oldest > 1 else 1
            raise OverloadedError(
                "the pipeline is overloaded; retry shortly",
                retry_after=retry,
                waiting=waiting,
                oldest_s=round(oldest, 2),
            )

    def queue_stats(self, max_age_s: float = 0.5) -> list[QueueStats]:
        """Queue stats, cached briefly: the overload check runs on every submission."""
        cache = self._queues
        with cache.lock:
            if time.monotonic() - cache.at > max_age_s:
                cache.stats = queue_stats(self.redis)
                cache.at = time.monotonic()
            return cache.stats
