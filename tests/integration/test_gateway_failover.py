"""kill -9 of the gateway while its batcher holds accepted jobs: a restarted gateway adopts the
backlog from Redis and every accepted job succeeds (docs/reliability.md, "Hostile clients and
lost work"; gateway/backlog.py). The recovery time printed is the one the docs state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from digitflow.jobs import TERMINAL, JobStore
from digitflow.keys import BACKLOG_PREFIX, GATEWAYS
from tests.conftest import RedisServer
from tests.integration.test_faults import DoneCounter, photos, submit_many
from tests.stacks import start_stack

pytestmark = pytest.mark.slow
# One batch of one job in flight at a time: the rest of what is accepted waits in the batcher.
BACKLOG_ENV = {"BATCHES_IN_FLIGHT": "1", "BATCH_MAX": "1", "JOB_DEADLINE_S": "300", "SWEEP_INTERVAL_S": "1"}


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
