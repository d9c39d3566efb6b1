"""The job's fence and the delivery owners, against a real Redis (no worker processes).

A delivery claims a job when its stage starts (JobStore.start_stage); a later delivery of the
same message (its worker was taken for dead) claims it again, and from then on the first one's
writes, and what it sent on, are refused. A dead owner's unacknowledged message is pushed back
to its queue once, however many keepers look (digitflow/deliveries.py, digitflow/broker.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from digitflow import broker
from digitflow.deliveries import DeliveryKeeper, owner_id
from digitflow.errors import DigitflowError
from digitflow.jobs import JobStore, NewJob, new_job_id, token_fence
from digitflow.keys import DELIVERIES, DELIVERY_OWNERS, JOB_PREFIX
from digitflow.messages import make_batch
from digitflow.stage import run_stage


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, 3600)


def test_a_second_delivery_fences_the_first_out(store: JobStore) -> None:
    (job_id,) = store.create([NewJob(new_job_id(), "digits", b"img")])
    first, _ = store.start_stage("inference", "b1", [job_id], time.time(), sender_fences=[""])
    again, attempt = store.start_stage("inference", "b1", [job_id], time.time(), sender_fences=[""])
    assert first == [1] and again == [2] and attempt == 2, "a redelivery of the same message claims the job"
    # The first delivery comes back: its failure is refused, and so is what it sent on.
    assert store.fail("inference", [(job_id, DigitflowError("late"))], {job_id: token_fence(1)}) == [False]
    assert store.start_stage("postprocess", "b1", [job_id], time.time(), sender_fences=["1"])[0] == [-1]
    # A copy of the batch sent by someone else (another batch) cannot claim it either.
    assert store.start_stage("inference", "b2", [job_id], time.time(), sender_fences=[""])[0] == [-1]
    # The holder's hop is claimed, and only the next stage's holder records the result.
    assert store.start_stage("postprocess", "b1", [job_id], time.time(), sender_fences=["2"])[0] == [3]
    assert store.succeed("postprocess", [(job_id, {"label": 1})], {job_id: token_fence(2)}) == [False]
    assert store.succeed("postprocess", [(job_id, {"label": 7})], {job_id: token_fence(3)}) == [True]
    assert store.get(job_id)["result"] == {"label": 7}


def test_a_stale_stage_task_records_nothing_and_sends_nothing_on(store: JobStore, redis_client: redis.Redis) -> None:
    ids = store.create([NewJob(new_job_id(), "digits", b"img") for _ in range(2)])
    batch = dict(make_batch("b1", [{"job_id": i, "model": "digits", "logits": [0.0, 1.0]} for i in ids]))
    ran: list[int] = []

    def step(items: list[dict[str, object]]) -> list[dict[str, object]]:
        if not ran:  # while this delivery runs, the batch is handed on and claimed again
            store.start_stage("postprocess", "b1", ids, time.time())
        ran.append(len(items))
        return [{"label": 1} for _ in items]

    out = run_stage("postprocess", batch, store, step, ("logits",), terminal=True)  # type: ignore[arg-type]
    assert out["items"] == [] and ran == [2]
    assert [store.status(i) for i in ids] == ["postprocessing"] * 2, "the stale delivery recorded no result"
    assert [redis_client.hget(JOB_PREFIX + i, "fence") for i in ids] == [b"2", b"2"]


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    broker.install()
    conn = Connection(redis_url, transport_options={"visibility_timeout": 3600})
    yield conn
    conn.release()


def deliver(connection: Connection, body: dict[str, str]) -> tuple[object, str]:
    channel = connection.channel()
    producer = connection.Producer(channel)
    producer.publish(body, routing_key="q", exchange="", serializer="json", declare=[])
    queue = connection.SimpleQueue("q", no_ack=False)
    message = queue.get(timeout=2)
    return message, str(message.delivery_tag)


def test_a_dead_owners_delivery_is_pushed_back_once_and_its_late_ack_removes_nothing(
    connection: Connection, redis_client: redis.Redis, redis_url: str
) -> None:
    message, tag = deliver(connection, {"n": "1"})
    assert redis_client.hget(DELIVERIES, tag) == owner_id().encode()
    # Make this delivery a dead process's: an owner that last beat a minute ago.
    redis_client.hset(DELIVERIES, tag, "ghost")
    redis_client.zadd(DELIVERY_OWNERS, {"ghost": time.time() - 60})
    restored: list[int] = []

    def restore(tags: object) -> int:
        n = broker.restore_owned(connection, tags)  # type: ignore[arg-type]
        restored.append(n)
        return n

    keepers = [DeliveryKeeper(redis_url, 2.0, restore) for _ in range(2)]
    keepers[1].me = "another-live-keeper"
    try:
        assert [k.hand_on() for k in keepers] == [1, 0], "the first keeper pushes it back, the second finds nothing"
    finally:
        for keeper in keepers:
            keeper.client.close()
    assert redis_client.llen("q") == 1 and redis_client.hlen("unacked") == 0
    assert redis_client.zscore(DELIVERY_OWNERS, "ghost") is None
    again, again_tag = deliver(connection, {"n": "1"})  # the same message, delivered again
    assert again_tag == tag and redis_client.llen("q") == 1  # (deliver published a second copy)
    redis_client.hset(DELIVERIES, tag, "new-holder")
    message.ack()  # type: ignore[attr-defined]  # the first holder's late acknowledgement
    assert redis_client.hexists("unacked", tag), "a late ack must not drop the new holder's delivery"
    redis_client.hset(DELIVERIES, tag, owner_id())
    again.ack()  # type: ignore[attr-defined]
    assert not redis_client.hexists("unacked", tag) and not redis_client.hexists(DELIVERIES, tag)
