"""The job record's guarantees, against a real Redis: one result per job, whatever is redelivered."""

from __future__ import annotations

import time

import pytest
import redis

from digitflow.errors import DeadlineExceededError, DigitflowError, IdempotencyConflictError
from digitflow.jobs import Idempotency, JobStore, NewJob, new_job_id
from digitflow.keys import ACTIVE_JOBS


def make_jobs(store: JobStore, n: int) -> list[str]:
    return store.create([NewJob(new_job_id(), "digits", b"img") for _ in range(n)])


def test_a_finished_job_is_never_written_again(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    (job_id,) = make_jobs(store, 1)
    store.start_stage("postprocess", "b", [job_id], time.time())
    store.succeed("postprocess", [(job_id, {"label": 3})])
    # A redelivered copy of any stage arrives after the result was recorded.
    live, attempt = store.start_stage("inference", "b", [job_id], time.time())
    assert live == [False] and attempt == 1
    store.succeed("postprocess", [(job_id, {"label": 9})])
    store.fail("inference", [(job_id, DigitflowError("late failure"))])
    job = store.get(job_id)
    assert job["status"] == "succeeded" and job["result"] == {"label": 3} and job["error"] is None
    assert redis_client.get(f"df:img:{job_id}") is None, "the parked image is dropped when the job ends"
    assert redis_client.zscore(ACTIVE_JOBS, job_id) is None


def test_completions_are_published_once_per_job(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    ids = make_jobs(store, 3)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("df:done")
    store.succeed("postprocess", [(i, {"label": 1}) for i in ids])
    store.succeed("postprocess", [(i, {"label": 1}) for i in ids])
    messages = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message:
            messages.append(message["data"].decode())
    pubsub.close()
    assert messages == [",".join(ids)]


def test_redeliveries_are_counted_and_a_repeat_crasher_is_struck(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    ids = make_jobs(store, 2)
    assert store.start_stage("preprocess", "b1", ids, time.time())[1] == 1
    assert store.start_stage("preprocess", "b1", ids, time.time())[1] == 2
    assert store.start_stage("preprocess", "other", ids, time.time())[1] == 1
    assert store.strike_suspect("preprocess", "b1") is None
    store.set_suspect("preprocess", "b1", ids[1])
    assert store.strike_suspect("preprocess", "b1") == (ids[1], 1)
    store.set_suspect("preprocess", "b1", ids[1])
    assert store.strike_suspect("preprocess", "b1") == (ids[1], 2)
    assert store.strike_suspect("preprocess", "b1") is None, "a strike is taken once"


def test_overdue_jobs_fail_at_the_stage_they_wait_in(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    queued, inferring, done = make_jobs(store, 3)
    store.start_stage("inference", "b", [inferring], time.time())
    store.succeed("postprocess", [(done, {"label": 0})])
    failed = store.fail_overdue(0.0, lambda stage: DeadlineExceededError(f"stuck at {stage}"))
    assert sorted(failed) == sorted([queued, inferring])
    assert store.get(queued)["error"]["stage"] == "preprocess"
    assert store.get(inferring)["error"] == {
        "code": "deadline_exceeded",
        "message": "stuck at inference",
        "stage": "inference",
    }
    assert store.get(done)["status"] == "succeeded"
    assert redis_client.zcard(ACTIVE_JOBS) == 0
    assert store.fail_overdue(0.0, lambda stage: DeadlineExceededError("x")) == []


def test_idempotency_keys_map_to_one_job_per_owner(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    first = store.create([NewJob(new_job_id(), "digits", b"a")], Idempotency("k1", "fp-a"), "alice")
    again = store.create([NewJob(new_job_id(), "digits", b"a")], Idempotency("k1", "fp-a"), "alice")
    other = store.create([NewJob(new_job_id(), "digits", b"a")], Idempotency("k1", "fp-a"), "bob")
    assert first == again != other
    assert redis_client.get(f"df:img:{first[0]}") == b"a"
    with pytest.raises(IdempotencyConflictError):
        store.create([NewJob(new_job_id(), "digits", b"b")], Idempotency("k1", "fp-b"), "alice")


def test_a_stage_starts_in_one_round_trip_even_after_redis_lost_its_scripts(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    ids = make_jobs(store, 2)
    sent = {"n": 0}
    execute_command = redis_client.execute_command

    def counting(*args: object, **kwargs: object) -> object:
        sent["n"] += 1
        return execute_command(*args, **kwargs)

    redis_client.execute_command = counting  # type: ignore[method-assign]
    fences, attempt = store.start_stage("preprocess", "b1", ids, time.time())
    assert fences == [1, 1] and attempt == 1
    assert sent["n"] == 0, "no SCRIPT EXISTS before the pipeline"
    redis_client.script_flush()  # what a Redis restart without its script cache looks like
    fences, attempt = store.start_stage("inference", "b1", ids, time.time(), sender_fences=["1", "1"])
    assert fences == [2, 2] and attempt == 1
    assert store.get(ids[0])["status"] == "inferring"
