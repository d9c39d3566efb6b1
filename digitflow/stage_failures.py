"""A stage task that ended in an exception outside ``run_stage``'s own handling: fail the live
jobs its delivery still holds, at once, instead of leaving them to the deadline sweep."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from digitflow.errors import DigitflowError, InvalidMessageError
from digitflow.jobs import JobStore, message_fence, token_fence
from digitflow.messages import parse_batch
from digitflow.observability import JOBS_FAILED, log_event
from digitflow.stage import CLAIMED, UnexpectedStageError, log_store_refused, stage_timeout, store_unavailable

logger = logging.getLogger("digitflow.stage")


def fail_batch_after_task_error(stage: str, store: JobStore, raw_batch: Any, exc: BaseException) -> int:
    """Fail the live jobs of a stage task that ended in an exception outside ``run_stage``'s own
    handling: its hard time limit (the worker killed the process), a soft limit that struck
    outside the step, or a Redis error while sending the next message. Celery acknowledges
    such a task, so without this its jobs would wait for the deadline sweep. Returns how many
    jobs were failed; Redis errors here are logged and left to the sweep.
    """
    try:
        batch = parse_batch(raw_batch)
    except InvalidMessageError:
        return 0
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        error: DigitflowError = stage_timeout(stage)
    elif isinstance(exc, redis.RedisError) or "OOM" in str(exc):
        error = store_unavailable(stage)
    else:
        error = UnexpectedStageError(f"the {stage} stage failed unexpectedly")
    items = [item for item in batch["items"] if isinstance(item, dict) and item.get("job_id")]
    job_ids = [str(item["job_id"]) for item in items]
    # Only jobs this delivery still holds: by the tokens it claimed when it ran in this process,
    # else (a pool's parent, whose child it killed) its sender's or claimed by a delivery of it.
    own = CLAIMED.pop(batch["batch_id"], {})
    fences = {
        str(i["job_id"]): token_fence(own[i["job_id"]])
        if i["job_id"] in own
        else message_fence(stage, batch["batch_id"], str(i.get("fence", "")))
        for i in items
    }
    try:
        live = store.fail(stage, [(job_id, error) for job_id in job_ids], fences)
    except redis.RedisError as write_error:
        log_store_refused(stage, batch["batch_id"], write_error)
        return 0
    failed = sum(live)
    log_event(
        logger,
        "task_failed",
        logging.ERROR,
        stage=stage,
        batch_id=batch["batch_id"],
        error_code=error.code,
        failed=failed,
        error=f"{type(exc).__name__}: {str(exc)[:300]}",
    )
    for _ in range(failed):
        JOBS_FAILED.labels(stage, error.code).inc()
    return failed
