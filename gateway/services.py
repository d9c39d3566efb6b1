"""The gateway's per-process collaborators: job store, batcher, completion listener, Celery.

The gateway starts chains by task name only; it never imports worker code or torch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import cast

import kombu.exceptions
import redis
from celery import Celery
from flask import current_app, has_request_context, request

from digitflow.celery_app import describe_batch, hop_options, make_celery
from digitflow.errors import DeadlineExceededError, DigitflowError, OverloadedError, ServiceUnavailableError
from digitflow.heartbeat import live_processes, live_workers
from digitflow.jobs import JobStore
from digitflow.keys import SWEEP_LOCK
from digitflow.messages import Item, make_batch
from digitflow.observability import BATCH_SIZE, log_event
from digitflow.queues import QueueStats, queue_stats
from digitflow.redis_client import claim, connect
from digitflow.registry_client import RegistryClient
from digitflow.settings import GatewaySettings
from digitflow.store_memory import MemoryGauge
from digitflow.tasks import INFERENCE, POSTPROCESS, PREPROCESS, QUEUE_OF_STAGE, STAGES, inference_queue
from gateway.backlog import Backlog
from gateway.batcher import Batcher
from gateway.completions import CompletionListener
from gateway.model_lookup import ModelViewCache

logger = logging.getLogger("gateway")
# What a send raises while Redis cannot be reached (kombu wraps redis-py's errors).
_BROKER_AWAY = (kombu.exceptions.OperationalError, redis.ConnectionError, redis.TimeoutError, OSError)


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
        self.backlog = Backlog(self.redis)
        self.memory = MemoryGauge(self.redis)
        self.celery: Celery = make_celery("gateway", settings)
        # Fail fast when the broker is away rather than hold the request thread.
        self.celery.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}
        self.batcher = Batcher(
            self._send_chain,
            batch_max=settings.batch_max,
            wait_s=settings.batch_wait_ms / 1000.0,
            # 0 = auto: sized to the preprocess fleet by the maintenance thread; 3 until it looks.
            max_in_flight=settings.batches_in_flight or 3,
            on_send_error=self._fail_unsent,
        )
        # Its own connection with no read timeout: it blocks in pub/sub by design.
        self.listener = CompletionListener(connect(settings.redis_url, socket_timeout=None), self.batcher.finished)  # type: ignore[arg-type]
        self.registry = RegistryClient(self.celery, settings.redis_url, settings.heartbeat_ttl_s)
        self._queues = _QueueCache()
        self.model_views = ModelViewCache(self.redis)
        self._sweeper: threading.Thread | None = None
        self._sweeper_lock = threading.Lock()
        self._stop = threading.Event()

    def _send_chain(self, batch_id: str, items: list[Item]) -> None:
        BATCH_SIZE.labels("gateway").observe(len(items))
        # A model with its own inference queue (DEDICATED_MODEL_QUEUES) travels in its own chain.
        by_queue: dict[str, list[Item]] = {}
        for item in items:
            by_queue.setdefault(inference_queue(item["model"], self.settings.dedicated_model_queues), []).append(item)
        for i, (queue, group) in enumerate(sorted(by_queue.items())):
            batch = make_batch(batch_id if len(by_queue) == 1 else f"{batch_id}.{i}", group)
            # The chain preprocess -> inference -> postprocess as one message whose embedded
            # ``chain`` (next step last) the workers pop; what ``chain(...).apply_async()`` sends,
            # without building and freezing three signatures per batch.
            options = {**hop_options(QUEUE_OF_STAGE["preprocess"]), "argsrepr": describe_batch(batch)}
            self.celery.send_task(PREPROCESS, args=(batch,), chain=self._chain_after_preprocess(queue), **options)
        self._forget_sent(items)

    def _chain_after_preprocess(self, inference_queue_name: str) -> list[dict[str, object]]:
        sig = self.celery.signature
        return [
            dict(sig(POSTPROCESS, **hop_options(QUEUE_OF_STAGE["postprocess"]))),
            dict(sig(INFERENCE, **hop_options(inference_queue_name))),
        ]

    def _forget_sent(self, items: list[Item]) -> None:
        try:
            self.backlog.sent([item["job_id"] for item in items])
        except redis.RedisError as exc:  # sent already; a gateway adopting them later re-runs at worst
            logger.warning("backlog not trimmed: %s", exc, extra={"event": "backlog_trim_failed"})

    def _fail_unsent(self, items: list[Item], exc: Exception) -> bool:
        """The batcher's send failed: False keeps the jobs for a retry, True means recorded failed.

        A broker that is away (Redis restarting) is no fault of the jobs: they stay queued, in
        the batcher and in this gateway's backlog, and leave once it answers. Any other error
        would fail again, so the jobs end now as service_unavailable."""
        if isinstance(exc, _BROKER_AWAY):
            return False
        err: DigitflowError = ServiceUnavailableError(f"the job could not be queued: {type(exc).__name__}")
        self.store.fail_unsent([item["job_id"] for item in items], err)
        self._forget_sent(items)
        return True

    def dispatch(self, items: list[Item]) -> None:
        self.ensure_started()
        self.batcher.submit(items)

    def ensure_started(self) -> None:
        """Background threads start in the process that serves requests (after gateway.serve forks its processes)."""
        self.listener.ensure_started()
        with self._sweeper_lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._maintenance_loop, name="maintenance", daemon=True)
                self._sweeper.start()

    def _maintenance_loop(self) -> None:
        """Once a second: beat and adopt dead gateways' backlogs, size the batcher's in-flight
        cap to the preprocess fleet (when BATCHES_IN_FLIGHT=0, auto) and, every SWEEP_INTERVAL_S,
        fail jobs past JOB_DEADLINE_S so none stays queued forever (one sweeper at a time
        across gateway processes: a Redis lock)."""
        interval = self.settings.sweep_interval_s
        next_sweep = time.monotonic() + interval
        while not self._stop.wait(1.0):
            try:
                self._adopt_backlogs()
                if self.settings.batches_in_flight == 0:
                    processes = live_processes(self.redis, self.settings.heartbeat_ttl_s, "preprocess")
                    self.batcher.set_max_in_flight(max(2, processes + 1))
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + interval
                    self._sweep(interval)
            except redis.RedisError as exc:
                logger.warning("maintenance skipped: %s", exc, extra={"event": "maintenance_skipped"})

    def _adopt_backlogs(self) -> None:
        """Beat, and dispatch the accepted jobs of gateways that stopped beating (backlog.py)."""
        self.backlog.beat()
        adopted = self.backlog.adopt()
        if adopted:
            log_event(logger, "backlog_adopted", logging.WARNING, count=len(adopted))
            self.batcher.submit(adopted)

    def _sweep(self, interval: float) -> None:
        if not claim(self.redis, SWEEP_LOCK, interval * 0.9):
            return
        deadline = self.settings.job_deadline_s
        failed = self.store.fail_overdue(
            deadline, lambda stage: DeadlineExceededError(f"not finished within {deadline} s (stuck at {stage})")
        )
        if failed:
            log_event(logger, "jobs_deadline_exceeded", logging.WARNING, count=len(failed), job_ids=failed)
        self._redispatch_stalled()

    def _redispatch_stalled(self) -> None:
        """Send again, once, the jobs the broker lost (gateway/backlog.py says how that happens).
        Only while every stage has a live worker: with a stage down its queue still holds
        the jobs, and sending them again would only queue copies."""
        stalled_s = self.settings.stalled_after_s
        if stalled_s >= self.settings.job_deadline_s:
            return  # the deadline sweep fails them first
        if not all(live_workers(self.redis, self.settings.heartbeat_ttl_s, STAGES).values()):
            return
        items = self.backlog.reclaim_stalled(stalled_s)
        if items:
            ids = [item["job_id"] for item in items]
            log_event(logger, "jobs_redispatched", logging.WARNING, count=len(ids), job_ids=ids, stalled_s=stalled_s)
            self.batcher.submit(items)

    def close(self) -> None:
        """Stop this process's background threads (tests build many apps in one process)."""
        self._stop.set()
        self.batcher.close()
        with contextlib.suppress(redis.RedisError):
            self.backlog.leave()
        self.listener.stop()

    def check_overload(self) -> None:
        """Raise OverloadedError when waiting work or its age passes the configured limits."""
        limits = self.settings
        stats = self.queue_stats()
        waiting = self.batcher.pending + sum(s.depth for s in stats)
        incoming = (request.content_length or 0) if has_request_context() else 0  # about what it parks
        if not self.memory.admits(incoming, limits.redis_memory_high_water):  # new jobs are what fills it
            raise OverloadedError("the job store is nearly full; retry shortly", retry_after=2, reason="redis_memory")
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
                queues = [*QUEUE_OF_STAGE.values(), *(f"inference.{m}" for m in self.settings.dedicated_model_queues)]
                cache.stats = queue_stats(self.redis, queues)
                cache.at = time.monotonic()
            return cache.stats


def services() -> GatewayServices:
    """This app's collaborators (set up by ``create_app``), from inside a request."""
    return cast(GatewayServices, current_app.extensions["digitflow"])
