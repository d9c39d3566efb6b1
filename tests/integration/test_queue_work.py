"""``digitflow_queue_work``: waiting plus unacknowledged messages per queue, on a real Redis with
kombu's real Redis transport (the one the workers use), and on the gateway's ``/metrics``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from digitflow.celery_app import make_celery
from digitflow.keys import workers
from digitflow.messages import make_batch
from digitflow.queues import all_queues, queue_stats, queue_work
from digitflow.settings import CoreSettings, GatewaySettings
from digitflow.tasks import INFERENCE, PREPROCESS


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = make_celery("test", CoreSettings.from_env({"REDIS_URL": redis_url}))
    yield app
    app.close()


def send(app: Celery, task: str, queue: str) -> None:
    app.send_task(task, args=(make_batch("b", [{"job_id": "j", "model": "digits"}]),), queue=queue)


def test_work_counts_messages_a_worker_holds_unacknowledged(app: Celery, redis_client: redis.Redis) -> None:
    for _ in range(3):
        send(app, PREPROCESS, "preprocess")
    send(app, INFERENCE, "inference")
    assert queue_work(redis_client, ["preprocess", "inference", "postprocess"]) == {
        "preprocess": 3,
        "inference": 1,
        "postprocess": 0,
    }
    with app.connection_for_read() as conn:
        consumer = conn.SimpleQueue("preprocess", no_ack=False, accept=["msgpack"])
        taken = [consumer.get(timeout=5), consumer.get(timeout=5)]  # as a prefetching worker does
        # The list holds one message now, but the work is still three.
        assert queue_stats(redis_client, ["preprocess"])[0].depth == 1
        assert redis_client.hlen("unacked") == 2
        assert queue_work(redis_client, ["preprocess", "inference"]) == {"preprocess": 3, "inference": 1}
        taken[0].ack()
        assert queue_work(redis_client, ["preprocess"]) == {"preprocess": 2}
        taken[1].requeue()  # a rejected message goes back to its list: still counted once
        assert queue_work(redis_client, ["preprocess"]) == {"preprocess": 2}
        assert queue_stats(redis_client, ["preprocess"])[0].depth == 2
        consumer.close()


def test_every_queue_is_covered() -> None:
    assert all_queues() == ["preprocess", "inference", "postprocess", "registry", "monitor", "training"]
    assert "inference.fashion" in all_queues(["fashion"])


def test_gateway_exports_work_and_live_workers_of_every_service(
    app: Celery, redis_url: str, redis_client: redis.Redis
) -> None:
    from gateway import create_app

    send(app, PREPROCESS, "preprocess")
    redis_client.zadd(workers("registry"), {"registry-1@h": 1e12})  # a fresh heartbeat
    gateway = create_app(GatewaySettings.from_env({"REDIS_URL": redis_url}))
    try:
        text = gateway.test_client().get("/metrics").get_data(as_text=True)
    finally:
        gateway.extensions["digitflow"].close()
    assert re.search(r'^digitflow_queue_work\{queue="preprocess"\} 1\.0$', text, re.MULTILINE), text
    for queue in all_queues():
        assert f'digitflow_queue_work{{queue="{queue}"}}' in text
    assert re.search(r'^digitflow_live_workers\{stage="registry"\} 1\.0$', text, re.MULTILINE), text
    assert 'digitflow_live_workers{stage="training"} 0.0' in text
