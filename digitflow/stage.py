"""The frame every stage task runs in: parse the batch, skip finished jobs, run the step,
record timings, failures and results, and hand the survivors to the next stage.

A step is a pure function ``items -> [output or DigitflowError]`` (one entry per item, same
order), so one bad item fails only its own job and the step is unit-tested without Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from digitflow import tracing
from digitflow.errors import (
    DigitflowError,
    InvalidMessageError,
    PoisonJobError,
    StageTimeoutError,
    StoreUnavailableError,
)
from digitflow.jobs import Fence, JobStore, token_fence
from digitflow.messages import Batch, Item, check_item, make_batch, parse_batch
from digitflow.observability import (
    BATCH_SIZE,
    JOBS_FAILED,
    JOBS_PROCESSED,
    STAGE_QUEUE_SECONDS,
    STAGE_SECONDS,
    log_event,
)

Step = Callable[[list[Item]], Sequence[Any]]
logger = logging.getLogger("digitflow.stage")
_fault_hold_s = 0.0
# The fences this process's running batches claimed (batch id -> job -> token): a task that
# ends in an exception here fails only what its own delivery still holds.
CLAIMED: dict[str, dict[str, int]] = {}  # read by digitflow/stage_failures.py


def set_fault_hold(seconds: float) -> None:
    """Fault injection for the reliability tests only (FAULT_HOLD_S, set by worker_runtime):
    each batch is held this long after its jobs are claimed, so that a test can kill or stop
    a worker that certainly holds one. 0 = off."""
    global _fault_hold_s
    _fault_hold_s = seconds


class UnexpectedStageError(DigitflowError):
    """A step raised something that is not a DigitflowError: a bug, reported per job. The job's
    error says only that; the exception itself goes to the service log (``step_crashed``)."""

    code = "internal_error"


def _failure_of(stage: str, exc: BaseException) -> DigitflowError:
    if isinstance(exc, DigitflowError):
        return exc
    return UnexpectedStageError(f"the {stage} stage failed unexpectedly")


def stage_timeout(stage: str) -> StageTimeoutError:
    """The error of a job its batch's soft time limit left unfinished (no strike: the batch as a
    whole ran too long, which says nothing about this job)."""
    return StageTimeoutError(f"the {stage} stage ran out of time for this job's batch; resubmit it")


def store_unavailable(stage: str) -> StoreUnavailableError:
    return StoreUnavailableError(f"the job store refused a write in the {stage} stage; resubmit later")


def run_stage(
    stage: str,
    raw_batch: Any,
    store: JobStore,
    step: Step,
    needs: Sequence[str] = (),
    terminal: bool = False,
    max_strikes: int = 2,
) -> Batch:
    """Run ``step`` over a batch; returns the batch for the next stage (empty if none left)."""
    received = time.time()
    try:
        batch = parse_batch(raw_batch)
    except InvalidMessageError as exc:
        # Nothing in it can be attributed to a job: log it, and let the message go.
        log_event(logger, "batch_rejected", logging.ERROR, stage=stage, error_code=exc.code)
        return make_batch("", [])
    items: list[Item] = []
    failures: list[tuple[str, DigitflowError]] = []
    for raw in batch["items"]:
        try:
            items.append(check_item(raw, needs))
        except InvalidMessageError as exc:
            job_id = exc.details.get("job_id")
            if job_id:
                failures.append((job_id, exc))
    # The version that served a job (set by inference) is recorded when the next stage starts.
    versions = {item["job_id"]: {"model_version": str(item["version"])} for item in items if "version" in item}
    senders = [str(item.get("fence", "")) for item in items]
    try:
        claimed, attempt = store.start_stage(
            stage, batch["batch_id"], [item["job_id"] for item in items], batch["sent_at"], versions, senders
        )
    except redis.RedisError as exc:
        # Redis refused the write (out of memory, or gone): fail the batch now rather than leave
        # its jobs unfinished until the deadline sweep. The failure write frees each job's image.
        log_store_refused(stage, batch["batch_id"], exc)
        refused: list[tuple[str, DigitflowError]] = [(item["job_id"], store_unavailable(stage)) for item in items]
        _record(stage, store, [], failures + refused, False, {})
        return make_batch(batch["batch_id"], [])
    if -1 in claimed:  # a delivery that came too late: another one holds these jobs now
        log_event(
            logger, "batch_fenced", logging.WARNING, stage=stage, batch_id=batch["batch_id"], jobs=claimed.count(-1)
        )
    # Jobs already finished (a redelivered message after a crash) or held by another delivery
    # are not run again.
    fences = {item["job_id"]: token for item, token in zip(items, claimed, strict=True) if token > 0}
    items = [item for item in items if item["job_id"] in fences]
    if _fault_hold_s and items:
        time.sleep(_fault_hold_s)
    STAGE_QUEUE_SECONDS.labels(stage).observe(max(0.0, received - batch["sent_at"]))
    BATCH_SIZE.labels(stage).observe(len(items))
    # Left in place when the task ends in an exception: its failure hook takes it.
    CLAIMED[batch["batch_id"]] = fences
    out = _run_claimed(stage, batch, items, failures, fences, attempt, store, step, terminal, max_strikes)
    CLAIMED.pop(batch["batch_id"], None)
    return out


def _run_claimed(
    stage: str,
    batch: Batch,
    items: list[Item],
    failures: list[tuple[str, DigitflowError]],
    fences: dict[str, int],
    attempt: int,
    store: JobStore,
    step: Step,
    terminal: bool,
    max_strikes: int,
) -> Batch:
    # One span per batch and one per job in the job's own trace (digitflow/tracing.py); None when off.
    trace = tracing.start_batch(stage, batch["batch_id"], items) if items and tracing.enabled() else None
    started = time.perf_counter()
    outputs: Sequence[Any]
    if items and attempt > 1:
        # This batch was delivered before and its process died: find the culprit by running
        # the jobs one at a time, and fail a job that keeps killing the process as poison.
        items, poisoned = _strike(stage, store, batch["batch_id"], items, max_strikes)
        failures += poisoned
        outputs = _run_one_by_one(stage, store, batch["batch_id"], items, step)
    else:
        outputs = _run_batch(stage, items, step)
    duration = time.perf_counter() - started
    STAGE_SECONDS.labels(stage).observe(duration)

    passed: list[tuple[Item, Any]] = []
    for item, out in zip(items, outputs, strict=True):
        if isinstance(out, BaseException):
            failures.append((item["job_id"], _failure_of(stage, out)))
        else:
            passed.append((item, out))
    held = {job_id: token_fence(token) for job_id, token in fences.items()}
    try:
        _record(stage, store, passed, failures, terminal, held)
    except redis.RedisError as exc:
        log_store_refused(stage, batch["batch_id"], exc)
        lost: list[tuple[str, DigitflowError]] = [(item["job_id"], store_unavailable(stage)) for item, _ in passed]
        _record(stage, store, [], failures + lost, terminal, held)  # raises if Redis takes no write at all
        passed = []
    # The next stage claims a job only from the delivery holding its fence (what a paused
    # worker sends after another took its batch over is refused there).
    for item, out in passed:
        if isinstance(out, dict):
            out["fence"] = str(fences[item["job_id"]])
    if trace is not None:
        forward = trace.end({job_id: err.code for job_id, err in failures})
        if not terminal:  # the next stage continues each job's trace from this stage's span
            passed = [(item, {**out, "traceparent": forward[item["job_id"]]}) for item, out in passed]
    duration_ms = round(duration * 1000, 3)
    if logger.isEnabledFor(logging.INFO):
        log_event(
            logger,
            "batch_done",
            stage=stage,
            batch_id=batch["batch_id"],
            batch_size=len(items),
            duration_ms=duration_ms,
            job_ids=[item["job_id"] for item in items],
            failed=len(failures),
        )
        # One line per job too, so `grep <job_id>` over any service's log tells its story.
        for item, _ in passed:
            log_event(
                logger,
                "job_stage_done",
                stage=stage,
                job_id=item["job_id"],
                batch_id=batch["batch_id"],
                duration_ms=duration_ms,
            )
    if terminal:
        return make_batch(batch["batch_id"], [])
    return make_batch(batch["batch_id"], [out for _, out in passed])


def log_store_refused(stage: str, batch_id: str, exc: redis.RedisError) -> None:
    log_event(logger, "store_write_refused", logging.ERROR, stage=stage, batch_id=batch_id, error=str(exc)[:300])


def _run_batch(stage: str, items: list[Item], step: Step) -> Sequence[Any]:
    try:
        outputs = step(items) if items else []
        if len(outputs) != len(items):
            raise InvalidMessageError(f"{stage} step returned {len(outputs)} outputs for {len(items)} items")
        return outputs
    except SoftTimeLimitExceeded:  # the task's soft time limit: these jobs did not finish in time
        log_event(logger, "stage_timeout", logging.WARNING, stage=stage, jobs=len(items))
        return [stage_timeout(stage)] * len(items)
    except Exception as exc:  # the whole step broke (e.g. model will not load): fail its jobs
        if not isinstance(exc, DigitflowError):
            logger.exception("step crashed", extra={"event": "step_crashed", "stage": stage})
        return [_failure_of(stage, exc)] * len(items)


def _run_one_by_one(stage: str, store: JobStore, batch_id: str, items: list[Item], step: Step) -> list[Any]:
    outputs: list[Any] = []
    for item in items:
        if outputs and isinstance(outputs[-1], StageTimeoutError):
            outputs.append(stage_timeout(stage))  # out of time: the rest are not run at all
            continue
        store.set_suspect(stage, batch_id, item["job_id"])
        outputs.extend(_run_batch(stage, [item], step))
    store.set_suspect(stage, batch_id, None)
    return outputs


def _strike(
    stage: str, store: JobStore, batch_id: str, items: list[Item], max_strikes: int
) -> tuple[list[Item], list[tuple[str, DigitflowError]]]:
    struck = store.strike_suspect(stage, batch_id)
    log_event(logger, "batch_redelivered", logging.WARNING, stage=stage, batch_id=batch_id, suspect=struck)
    if struck is None or struck[1] < max_strikes:
        return items, []
    job_id, strikes = struck
    err = PoisonJobError(
        f"this input crashed the {stage} worker {strikes} times; it will not be retried", strikes=strikes
    )
    return [item for item in items if item["job_id"] != job_id], [(job_id, err)]


def _record(
    stage: str,
    store: JobStore,
    passed: list[tuple[Item, Any]],
    failures: list[tuple[str, DigitflowError]],
    terminal: bool,
    fences: Mapping[str, Fence],
) -> None:
    refused = 0
    if failures:
        written = store.fail(stage, failures, fences)
        refused += written.count(False)
        for job_id, err in failures:
            JOBS_FAILED.labels(stage, err.code).inc()
            log_event(
                logger,
                "job_failed",
                logging.WARNING,
                stage=stage,
                job_id=job_id,
                error_code=err.code,
                error=err.message[:500],  # the job's record may carry only a generic sentence
            )
    if passed:
        if terminal:
            refused += store.succeed(stage, [(item["job_id"], out) for item, out in passed], fences).count(False)
        JOBS_PROCESSED.labels(stage).inc(len(passed))
    if refused:  # finished meanwhile, or fenced off: another delivery answers for them
        log_event(logger, "job_writes_refused", logging.WARNING, stage=stage, jobs=refused)
