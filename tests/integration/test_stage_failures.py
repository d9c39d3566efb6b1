"""How run_stage ends a batch that ran out of time or whose step broke, against a real Redis
(no workers: the steps are plain functions, the time limit's exception raised as Celery would)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from digitflow.jobs import JobStore, NewJob, new_job_id
from digitflow.keys import JOB_PREFIX
from digitflow.messages import Item, make_batch
from digitflow.stage import run_stage
from digitflow.stage_failures import fail_batch_after_task_error


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, 3600)


def batch_of(store: JobStore, n: int, batch_id: str = "b1") -> tuple[list[str], dict[str, Any]]:
    ids = store.create([NewJob(new_job_id(), "digits", b"img") for _ in range(n)])
    return ids, dict(make_batch(batch_id, [{"job_id": i, "model": "digits"} for i in ids]))


def test_a_soft_time_limit_fails_the_batch_with_stage_timeout_and_no_strike(
    store: JobStore, redis_client: redis.Redis
) -> None:
    ids, batch = batch_of(store, 3)

    def step(items: list[Item]) -> Sequence[Any]:
        raise SoftTimeLimitExceeded()

    out = run_stage("preprocess", batch, store, step)
    assert out["items"] == []
    for job_id in ids:
        job = store.get(job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "stage_timeout"
        assert not redis_client.hexists(JOB_PREFIX + job_id, "strikes:preprocess")


def test_run_one_by_one_stops_at_the_soft_limit_and_keeps_what_finished(store: JobStore) -> None:
    ids, batch = batch_of(store, 3)
    store.start_stage("preprocess", "b1", ids, time.time())  # an earlier delivery: attempt 2 now
    ran: list[str] = []

    def step(items: list[Item]) -> Sequence[Any]:
        ran.append(items[0]["job_id"])
        if len(ran) == 2:
            raise SoftTimeLimitExceeded()
        return [{"job_id": items[0]["job_id"], "model": "digits", "pixels": b"x"}]

    out = run_stage("preprocess", batch, store, step)
    assert [item["job_id"] for item in out["items"]] == ids[:1]
    assert ran == ids[:2], "after the time is up no further job is started"
    assert [store.get(j)["error"]["code"] for j in ids[1:]] == ["stage_timeout", "stage_timeout"]


def test_a_crashing_step_reports_a_generic_error_without_its_exception_text(store: JobStore) -> None:
    ids, batch = batch_of(store, 1)

    def step(items: list[Item]) -> Sequence[Any]:
        raise OSError("/srv/models/digits/3/weights.safetensors: permission denied")

    run_stage("inference", batch, store, step)
    assert store.get(ids[0])["error"] == {
        "stage": "inference",
        "code": "internal_error",
        "message": "the inference stage failed unexpectedly",
    }


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeLimitExceeded(6.4), "stage_timeout"),
        (
            redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
            "store_unavailable",
        ),
        (KeyError("x"), "internal_error"),
    ],
)
def test_a_task_that_died_outside_run_stage_fails_its_live_jobs_at_once(
    store: JobStore, exc: BaseException, code: str
) -> None:
    ids, batch = batch_of(store, 2)
    store.succeed("postprocess", [(ids[0], {"label": 1})])  # already finished: left alone
    assert fail_batch_after_task_error("inference", store, batch, exc) == 1
    assert store.get(ids[0])["status"] == "succeeded"
    assert store.get(ids[1])["error"]["code"] == code
    assert store.get(ids[1])["error"]["stage"] == "inference"


def test_a_strike_never_re_creates_an_expired_job(store: JobStore, redis_client: redis.Redis) -> None:
    ids, _ = batch_of(store, 1)
    store.set_suspect("preprocess", "b1", ids[0])
    redis_client.delete(JOB_PREFIX + ids[0])  # the record expired while the batch was redelivered
    assert store.strike_suspect("preprocess", "b1") is None
    assert not redis_client.exists(JOB_PREFIX + ids[0]), "HINCRBY would re-create it without a TTL"


def test_job_errors_carry_a_code_and_a_generic_sentence_not_paths(store: JobStore) -> None:
    ids, batch = batch_of(store, 2)
    path = "/srv/var/model-cache/digits/3/weights.safetensors"

    def step(items: list[Item]) -> Sequence[Any]:
        from digitflow.errors import ModelUnavailableError, NoInkError

        return [
            ModelUnavailableError(f"{path}: not valid safetensors: HeaderTooLarge", path=path),
            NoInkError("No ink was found in the image."),  # a client's own input: told as it is
        ]

    run_stage("inference", batch, store, step)
    assert store.get(ids[0])["error"] == {
        "stage": "inference",
        "code": "model_unavailable",
        "message": "the model cannot be loaded right now",
    }
    assert store.get(ids[1])["error"]["message"] == "No ink was found in the image."
