"""Jobs the broker lost are sent again: the gateway's sweep, against a real Redis and a real stack.

kombu's Redis transport pops a message off its queue before it lists it as unacknowledged, so
a worker killed in between takes the message with it and no visibility timeout brings it back
(gateway/backlog.py). These tests lose a message that way on purpose.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis

from digitflow.heartbeat import Heartbeat
from digitflow.jobs import TERMINAL, JobStore, NewJob
from digitflow.keys import ACTIVE_JOBS, JOB_PREFIX, SWEEP_LOCK
from digitflow.messages import Item
from digitflow.queues import queue_stats
from digitflow.settings import GatewaySettings
from digitflow.tasks import STAGES
from gateway import create_app
from gateway.backlog import Backlog
from gateway.services import GatewayServices
from tests.conftest import RedisServer, start_redis, stop_redis, wait_until
from tests.integration.test_faults import DoneCounter, photos, submit_many
from tests.stacks import start_stack


def accept(store: JobStore, backlog: Backlog, n: int, sent: bool = True) -> list[Item]:
    """``n`` jobs accepted through ``backlog`` as the gateway accepts them; ``sent``: handed on."""
    items: list[Item] = [{"job_id": uuid.uuid4().hex, "model": "digits"} for _ in range(n)]
    jobs = [NewJob(item["job_id"], "digits", b"png") for item in items]
    store.create(jobs, backlog=backlog.entries(items))
    if sent:
        backlog.sent([item["job_id"] for item in items])
    return items


def age(client: redis.Redis, job_id: str, seconds: float) -> None:
    """Make a job look accepted ``seconds`` ago."""
    then = time.time() - seconds
    client.hset(JOB_PREFIX + job_id, "created_at", repr(then))
    client.zadd(ACTIVE_JOBS, {job_id: then})


def test_a_sent_job_without_progress_is_reclaimed_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store, gateway, other = JobStore(client, 3600), Backlog(client), Backlog(client)
    lost, fresh = accept(store, gateway, 2), accept(store, gateway, 1)
    unsent_here, unsent_there = accept(store, gateway, 1, sent=False), accept(store, other, 1, sent=False)
    finished, progressing = accept(store, gateway, 1), accept(store, gateway, 1)
    for item in [*lost, *unsent_here, *unsent_there, *finished, *progressing]:
        age(client, item["job_id"], 100)
    store.succeed("postprocess", [(finished[0]["job_id"], {"label": 3})])
    store.start_stage("inference", "b1", [progressing[0]["job_id"]], time.time())  # a stage started just now

    reclaimed = gateway.reclaim_stalled(60)

    assert sorted(i["job_id"] for i in reclaimed) == sorted(i["job_id"] for i in lost)
    assert reclaimed[0] in lost  # the item as accepted: job id and model
    assert all(client.zscore(gateway.key, i["job_id"]) is not None for i in lost), "listed until sent"
    gateway.sent([i["job_id"] for i in lost])
    assert gateway.reclaim_stalled(60) == [], "a job is sent again once"
    # The fresh and the progressing job were left for their recent acceptance or stage start alone.
    assert {i["job_id"] for i in gateway.reclaim_stalled(0)} == {fresh[0]["job_id"], progressing[0]["job_id"]}
    client.close()


def test_a_removal_that_met_no_redis_is_made_at_the_next_beat(tmp_path: Path) -> None:
    """Redis restarted between a batch's send and its removal from the backlog (seen in the
    compose suite's Redis restart): left listed, the job would be shielded from the sweep until
    its deadline; it leaves at the next beat, and a lost message is sent again."""
    server = start_redis(tmp_path)
    client = redis.Redis.from_url(server.url())
    store, gateway = JobStore(client, 3600), Backlog(client)
    items = accept(store, gateway, 2, sent=False)
    ids = [i["job_id"] for i in items]
    stop_redis(server)
    with pytest.raises(redis.ConnectionError):
        gateway.sent(ids)
    server = start_redis(tmp_path, server.port)  # the same data: its append-only file
    try:
        assert all(client.zscore(gateway.key, j) is not None for j in ids), "still listed"
        gateway.beat()
        assert all(client.zscore(gateway.key, j) is None for j in ids)
        for job_id in ids:
            age(client, job_id, 100)
        assert sorted(i["job_id"] for i in gateway.reclaim_stalled(60)) == sorted(ids)
    finally:
        client.close()
        stop_redis(server)


def test_the_sweep_sends_stalled_jobs_again_only_while_every_stage_is_alive(redis_url: str) -> None:
    app = create_app(GatewaySettings(redis_url=redis_url, sweep_interval_s=0.5))
    svc: GatewayServices = app.extensions["digitflow"]
    client = redis.Redis.from_url(redis_url)
    try:
        items = accept(svc.store, svc.backlog, 2)
        for item in items:
            age(client, item["job_id"], svc.settings.stalled_after_s + 1)
        beats = {stage: Heartbeat(client, stage, f"{stage}@test", 1.0) for stage in STAGES}
        for stage in ("preprocess", "postprocess"):
            beats[stage].beat()
        svc._sweep(0.5)  # inference down: its queue would still hold the jobs
        assert queue_stats(client, ["preprocess"])[0].depth == 0
        assert client.hget(JOB_PREFIX + items[0]["job_id"], "redispatched") is None
        client.delete(SWEEP_LOCK)  # the first sweep holds it for 0.9 of its interval
        beats["inference"].beat()
        svc._sweep(0.5)
        wait_until(lambda: queue_stats(client, ["preprocess"])[0].depth == 1, 10, what="one batch sent again")
        assert client.zcard(svc.backlog.key) == 0, "sent jobs leave the backlog"
        assert [svc.store.status(i["job_id"]) for i in items] == ["queued"] * 2
    finally:
        svc.close()
        client.close()


# A 5 s visibility timeout: jobs count as stalled after 4 + 5 + 15 = 24 s without progress.
LOSS_ENV = {"VISIBILITY_TIMEOUT_S": "5", "JOB_DEADLINE_S": "120", "SWEEP_INTERVAL_S": "1"}


@pytest.mark.slow
def test_a_message_lost_with_its_worker_is_sent_again(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url(11)
    client = redis.Redis.from_url(url)
    client.flushdb()
    stack = start_stack(url, tmp_path / "var", env=LOSS_ENV)
    try:
        done, store = DoneCounter(url), JobStore(client, 3600)
        inference = stack.supervisor.running["inference"].proc.pid
        os.kill(inference, signal.SIGSTOP)
        images = photos(10, seed=400)
        ids = submit_many(stack, images, per_request=10)
        wait_until(
            lambda: all(store.status(i) == "preprocessing" for i in ids) and client.hlen("unacked") == 0,
            timeout_s=30,
            what="the batch preprocessed and on its way to inference",
        )
        time.sleep(1.0)  # the hop is published: in the queue, or already popped by the stopped worker
        popped = client.rpop("inference")  # taken by a consumer that then died, if still queued
        os.kill(inference, signal.SIGKILL)  # ... and a worker that popped it dies with it
        lost_at = time.monotonic()
        assert client.llen("inference") == 0 and client.hlen("unacked") == 0, "the message must be gone"

        statuses: list[str | None] = []
        while time.monotonic() < lost_at + 75:
            stack.supervisor.poll()  # starts the inference worker again
            statuses = [store.status(i) for i in ids]
            if all(s in TERMINAL for s in statuses):
                break
            time.sleep(0.3)
        recovery = time.monotonic() - lost_at
        print(f"\nlost message ({'queued' if popped else 'in the worker'}): 10 jobs finished {recovery:.1f} s later")
        assert statuses == ["succeeded"] * 10, statuses
        events = [e for e in stack.log_events("gateway") if e.get("event") == "jobs_redispatched"]
        assert sorted(j for e in events for j in e["job_ids"]) == sorted(ids)
        jobs = [store.get(i) for i in ids]
        assert sum(j["result"]["label"] == label for j, (_, label) in zip(jobs, images, strict=True)) >= 9
        time.sleep(0.5)
        done.close()
        assert all(done.counts[i] == 1 for i in ids), "every job must record exactly one result"
    finally:
        stack.close()
        client.close()
