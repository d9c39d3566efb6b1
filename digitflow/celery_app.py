"""``make_celery(service, settings)``: the one Celery configuration every service shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from digitflow import broker
from digitflow.settings import CoreSettings
from digitflow.tasks import ROUTES, TASK_OF_STAGE

ACCEPT_CONTENT = ("msgpack", "json")
RESULT_REPR_CHARS = 120  # of a stage task's return value in its log line and event


def hop_options(queue: str) -> dict[str, Any]:
    """Publish options of one stage hop (the gateway's first message and each chain step).

    ``exchange=""`` sends straight to the queue's list: with the queue's own direct exchange,
    kombu's Redis transport reads the exchange's binding set (one SMEMBERS round trip) before
    every LPUSH. ``declare=[]`` skips re-declaring the queue per message (its worker declared
    it; Redis needs no declaration to LPUSH). ``argsrepr``/``kwargsrepr`` preset spares
    Celery a ``saferepr`` of the whole batch per message; :func:`describe_batch` fills it.
    Measured against a local redis-server (CPU per message, best of 5 x 200): the gateway's
    send 0.65-0.75 ms as ``chain(...).apply_async()``, 0.40-0.47 ms with these options and
    ``send_task``; a worker's next hop 0.51-0.60 ms, 0.42-0.49 ms.
    """
    return {"queue": queue, "exchange": "", "declare": [], "argsrepr": "(batch,)", "kwargsrepr": "{}"}


def describe_batch(batch: Mapping[str, Any]) -> str:
    """What Flower and the worker log show as a stage task's arguments: the batch, in brief."""
    return f"(batch {batch.get('batch_id', '')}: {len(batch.get('items') or ())} jobs,)"


def make_celery(service: str, settings: CoreSettings) -> Celery:
    """A Celery app sending msgpack and accepting msgpack or JSON, never pickle; no result storage.

    JSON is accepted because Flower and ``celery inspect``/``control`` without ``-A`` send their
    remote-control messages (``enable_events``, ``inspect``) as JSON; refusing them broke Flower's
    worker pages and logged a ContentDisallowed every 5 s. Decoding JSON or msgpack runs no code;
    unpickling does, so pickle stays refused (tests/unit/test_celery_serialization.py).

    Results are not stored because the job record in Redis is the source of truth; a chain's
    next message is sent by the worker whatever the backend. Tasks are acknowledged after they
    run and rejected when their worker dies, so a killed worker's batch is redelivered; the
    job store makes that redelivery harmless.
    """
    broker.install()  # kombu's Redis transport with one client per channel (digitflow/broker.py)
    app = Celery(service, broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=list(ACCEPT_CONTENT),
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_routes=ROUTES,
        # Stage batches only (registry, monitor and training tasks are acknowledged on receipt
        # and may run for minutes): both limits sit below the visibility timeout (settings.py).
        # resultrepr_maxsize: Celery reprs every return value (the batch for the next hop) for its
        # log line and task-succeeded event; at its default 1,024 characters an inference batch's
        # repr cost 0.5 ms per task, at 120 under 0.05 (Flower shows the start of the batch).
        task_annotations={
            task: {
                "soft_time_limit": settings.soft_time_limit_s,
                "time_limit": settings.hard_time_limit_s,
                "resultrepr_maxsize": RESULT_REPR_CHARS,
            }
            for task in TASK_OF_STAGE.values()
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_disable_rate_limits=True,  # no rate limits are used; skips a per-task check
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            # A message a dead worker held is given to another worker after this long (see
            # docs/reliability.md); sweeps for such messages run every 5 s (each sweep costs
            # a new Redis client and a lock: every 2 s it was ~5% of a busy worker).
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "socket_keepalive": True,
        },
        broker_heartbeat=0,
        worker_enable_remote_control=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app
