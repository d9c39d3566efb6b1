"""A batch that runs too long ends at its stage's time limits, below the visibility timeout:
Redis never hands it to a second worker, and no innocent job is struck as poison.

Real Redis and real workers, preprocess under the prefork and under the solo pool;
FAULT_DELAY_MARKER makes preprocess sleep for twice VISIBILITY_TIMEOUT_S on a marked input
(with ":stuck", with the soft limit's signal blocked, as C code would be). With
VISIBILITY_TIMEOUT_S=8 the limits are 4 s (soft) and 6.4 s (hard).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import requests

from digitflow_cli.supervisor import SOLO_STAGES
from tests.conftest import RedisServer
from tests.integration.test_faults import FAST_RECOVERY, DoneCounter, photos, png_with_text, wait_all
from tests.stacks import Stack, start_stack

pytestmark = pytest.mark.slow
ENV = {**FAST_RECOVERY, "FAULT_DELAY_MARKER": "DIGITFLOW-SLOW"}
# A message is handed out again VISIBILITY_TIMEOUT_S after delivery, found by a sweep every 5 s.
REDELIVERY_BY_S = 8 + 5 + 2


@pytest.fixture(scope="module", params=["prefork", "solo"])
def slow_stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Preprocess under Celery's prefork pool (billiard enforces the limits), then under the solo
    pool (digitflow/solo_limits.py does)."""
    url = redis_server.url(10)
    redis.Redis.from_url(url).flushdb()
    # Prefork: two preprocess processes, so a redelivered batch would find a free one at once.
    solo = request.param == "solo"
    workers = {"preprocess": 1 if solo else 2, "inference": 1, "postprocess": 1}
    var = tmp_path_factory.mktemp(f"limits-{request.param}") / "var"
    stack = start_stack(url, var, env=ENV, workers=workers, solo=SOLO_STAGES | ({"preprocess"} if solo else set()))
    yield stack
    stack.close()


def post(stack: Stack, images: list[tuple[str, bytes, str]]) -> list[str]:
    files = [("image", image) for image in images]
    response = requests.post(f"{stack.base_url}/v1/jobs", files=files, timeout=30)
    assert response.status_code == 202, response.text
    body = response.json()
    return [j["job_id"] for j in body.get("jobs", [body])]


def runs_of(stack: Stack, job_id: str) -> int:
    """How many preprocess batches ran this job (one ``batch_done`` line per run)."""
    events = stack.log_events("preprocess")
    return sum(e.get("event") == "batch_done" and job_id in e.get("job_ids", []) for e in events)


def no_redelivery_or_poison(stack: Stack, ids: list[str], done: DoneCounter, since: float) -> None:
    time.sleep(max(0.0, since + REDELIVERY_BY_S - time.monotonic()))
    events = stack.log_events("preprocess")
    assert not [e for e in events if e.get("event") == "batch_redelivered"], "a batch was handed out twice"
    assert all(stack.job(job_id)["error"] is None or stack.job(job_id)["error"]["code"] != "poison" for job_id in ids)
    assert all(done.counts[job_id] == 1 for job_id in ids), "every job must record exactly one result"


def test_a_slow_batch_stops_at_the_soft_limit_and_runs_once(slow_stack: Stack) -> None:
    stack = slow_stack
    done = DoneCounter(stack.config.redis_url)
    normal = [(f"{i}.jpg", data, "image/jpeg") for i, (data, _) in enumerate(photos(4, seed=800))]
    slow = ("slow.png", png_with_text("DIGITFLOW-SLOW"), "image/png")
    start = time.monotonic()
    ids = post(stack, [normal[0], normal[1], slow, normal[2], normal[3]])
    jobs = wait_all(stack, ids, timeout_s=30)
    finished_in = time.monotonic() - start
    print(f"\n[soft limit] batch ended {finished_in:.1f} s after submission (soft limit 4 s)")
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded", "failed", "failed", "failed"], jobs
    # The slow job and those after it in the batch did not finish in time: stage_timeout, no strike.
    for job in jobs[2:]:
        assert job["error"] == {
            "stage": "preprocess",
            "code": "stage_timeout",
            "message": "the preprocess stage ran out of time for this job's batch; resubmit it",
        }
    assert finished_in < 8, "the batch must end before the visibility timeout"
    no_redelivery_or_poison(stack, ids, done, start)
    assert runs_of(stack, ids[2]) == 1
    done.close()


def test_a_stuck_batch_is_killed_at_the_hard_limit_and_its_jobs_fail_at_once(slow_stack: Stack) -> None:
    stack = slow_stack
    done = DoneCounter(stack.config.redis_url)
    start = time.monotonic()
    ids = post(stack, [("stuck.png", png_with_text("DIGITFLOW-SLOW:stuck"), "image/png")])
    (job,) = wait_all(stack, ids, timeout_s=30)
    finished_in = time.monotonic() - start
    print(f"\n[hard limit] stuck job failed {finished_in:.1f} s after submission (hard limit 6.4 s)")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "stage_timeout"  # type: ignore[index]
    assert finished_in < 8
    no_redelivery_or_poison(stack, ids, done, start)
    done.close()
    # The killed process was replaced (prefork: billiard starts a new child; solo: the process
    # ended itself and the supervisor, polled by wait_all, starts it again): the stage serves.
    (after,) = wait_all(stack, post(stack, [("after.jpg", photos(1, seed=900)[0][0], "image/jpeg")]), timeout_s=30)
    assert after["status"] == "succeeded"
