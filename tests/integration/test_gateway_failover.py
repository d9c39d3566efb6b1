"""Accepted jobs the gateway has not yet handed to the broker are not lost (docs/reliability.md,
"Hostile clients and lost work"; gateway/backlog.py, gateway/batcher.py):

* kill -9 of the gateway while its batcher holds accepted jobs: a restarted gateway adopts the
  backlog from Redis and every accepted job succeeds (the recovery time printed is the one the
  docs state);
* a batch whose send fails because Redis is away stays with the live gateway and leaves once
  Redis answers again, instead of waiting for JOB_DEADLINE_S.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from digitflow.jobs import TERMINAL, JobStore, NewJob
from digitflow.keys import BACKLOG_PREFIX, GATEWAYS
from digitflow.messages import Item
from digitflow.queues import queue_stats
from digitflow.settings import GatewaySettings
from gateway import create_app
from gateway.services import GatewayServices
from tests.conftest import RedisServer, start_redis, stop_redis, wait_until
from tests.integration.test_faults import DoneCounter, photos, submit_many
from tests.stacks import start_stack

# One batch of one job in flight at a time: the rest of what is accepted waits in the batcher.
BACKLOG_ENV = {"BATCHES_IN_FLIGHT": "1", "BATCH_MAX": "1", "JOB_DEADLINE_S": "300", "SWEEP_INTERVAL_S": "1"}


@pytest.mark.slow
def test_kill_9_of_the_gateway_under_a_backlog_loses_no_accepted_job(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url(10)
    client = redis.Redis.from_url(url)
    client.flushdb()
    stack = start_stack(url, tmp_path / "var", env=BACKLOG_ENV)
    try:
        done = DoneCounter(url)
        store = JobStore(client, 3600)
        images = photos(60, seed=300)
        ids = submit_many(stack, images, per_request=20)
        dead = [BACKLOG_PREFIX + gateway.decode() for gateway in client.zrange(GATEWAYS, 0, -1)]
        stack.supervisor.kill("gateway")
        killed_at = time.monotonic()
        waiting = sum(store.status(job_id) == "queued" for job_id in ids)
        assert waiting >= 10, f"only {waiting} jobs were still waiting at the kill: no backlog to lose"
        statuses: list[str | None] = []
        adopted_s = None
        deadline = killed_at + 60
        while time.monotonic() < deadline:
            stack.supervisor.poll()  # restarts the gateway, as compose's restart policy would
            statuses = [store.status(job_id) for job_id in ids]
            if adopted_s is None and dead and not client.exists(*dead):
                adopted_s = time.monotonic() - killed_at
            if all(status in TERMINAL for status in statuses):
                break
            time.sleep(0.2)
        recovery = time.monotonic() - killed_at
        print(
            f"\n{waiting} of 60 accepted jobs unfinished at kill -9 of the gateway; its backlog adopted after"
            f" {adopted_s or -1:.1f} s, all finished after {recovery:.1f} s"
        )
        jobs = [store.get(job_id) for job_id in ids]
        assert [j["status"] for j in jobs] == ["succeeded"] * 60, [j["error"] for j in jobs if j["error"]][:3]
        correct = sum(j["result"]["label"] == label for j, (_, label) in zip(jobs, images, strict=True))
        assert correct >= 55
        time.sleep(0.5)
        done.close()
        assert all(done.counts[job_id] == 1 for job_id in ids), "every job must record exactly one result"
    finally:
        stack.close()
        client.close()


def test_a_batch_sent_while_redis_is_down_leaves_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(tmp_path / "redis")
    app = create_app(GatewaySettings(redis_url=server.url()))
    svc: GatewayServices = app.extensions["digitflow"]
    client = redis.Redis.from_url(server.url())
    try:
        items: list[Item] = [{"job_id": f"{i:032x}", "model": "digits"} for i in range(3)]
        jobs = [NewJob(item["job_id"], "digits", b"png") for item in items]
        svc.store.create(jobs, backlog=svc.backlog.entries(items))
        stop_redis(server)  # SIGTERM: the accepted jobs are in its AOF
        svc.dispatch(items)  # the send meets no broker, nor can the failure be recorded
        wait_until(lambda: _retries(caplog) >= 2, 15, what="the gateway to keep the batch and retry")
        server = start_redis(tmp_path / "redis", server.port)
        wait_until(lambda: queue_stats(client, ["preprocess"])[0].depth == 1, 15, what="the batch to reach preprocess")
        assert svc.batcher.pending == 0
        assert client.zcard(svc.backlog.key) == 0, "sent jobs leave the backlog"
        assert [svc.store.status(item["job_id"]) for item in items] == ["queued"] * 3
    finally:
        svc.close()
        client.close()
        stop_redis(server)


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(getattr(r, "event", None) == "batch_send_retry" for r in caplog.records)
