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

from digitflow.errors import DigitflowError, InvalidMessageError
from digitflow.jobs import JobStore
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


class UnexpectedStageError(DigitflowError):
    """A step raised something that is not a DigitflowError: a bug, reported per job."""

    code = "internal_error"


def _failure_of(stage: str, exc: BaseException) -> DigitflowError:
    if isinstance(exc, DigitflowError):
        return exc
    return UnexpectedStageError(f"{stage} failed unexpectedly: {type(exc).__name__}")


def run_stage(
    stage: str,
    raw_batch: Any,
    store: JobStore,
    step: Step,
    needs: Sequence[str] = (),
    terminal: bool = False,
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
    live = store.start_stage(stage, [item["job_id"] for item in items], batch["sent_at"])
    # Jobs already finished (a redelivered message after a crash) are not run again.
    items = [item for item, is_live in zip(items, live, strict=True) if is_live]
    STAGE_QUEUE_SECONDS.labels(stage).observe(max(0.0, received - batch["sent_at"]))
    BATCH_SIZE.labels(stage).observe(len(items))

    started = time.perf_counter()
    outputs: Sequence[Any]
    try:
        outputs = step(items) if items else []
        if len(outputs) != len(items):
            raise InvalidMessageError(f"{stage} step returned {len(outputs)} outputs for {len(items)} items")
    except Exception as exc:  # the whole step broke (e.g. model will not load): fail its jobs
        if not isinstance(exc, DigitflowError):
            logger.exception("step crashed", extra={"event": "step_crashed", "stage": stage})
        outputs = [_failure_of(stage, exc)] * len(items)
    duration = time.perf_counter() - started
    STAGE_SECONDS.labels(stage).observe(duration)

    passed: list[tuple[Item, Any]] = []
    for item, out in zip(items, outputs, strict=True):
        if isinstance(out, BaseException):
            failures.append((item["job_id"], _failure_of(stage, out)))
        else:
            passed.append((item, out))
    _record(stage, store, passed, failures, terminal)
    log_event(
        logger,
        "batch_done",
        stage=stage,
        batch_id=batch["batch_id"],
        batch_size=len(items),
        duration_ms=round(duration * 1000, 3),
        job_ids=[item["job_id"] for item in items],
        failed=len(failures),
    )
    if terminal:
        return make_batch(batch["batch_id"], [])
    return make_batch(batch["batch_id"], [out for _, out in passed])


def _record(
    stage: str,
    store: JobStore,
    passed: list[tuple[Item, Any]],
    failures: list[tuple[str, DigitflowError]],
    terminal: bool,
) -> None:
    if failures:
        store.fail(stage, failures)
        for job_id, err in failures:
            JOBS_FAILED.labels(stage, err.code).inc()
            log_event(logger, "job_failed", logging.WARNING, stage=stage, job_id=job_id, error_code=err.code)
    if passed:
        if terminal:
            store.succeed(stage, [(item["job_id"], out) for item, out in passed])
        else:
            extra: dict[str, Mapping[str, str]] = {
                out["job_id"]: {"model_version": str(out["version"])} for _, out in passed if "version" in out
            }
            store.end_stage(stage, [item["job_id"] for item, _ in passed], extra)
        JOBS_PROCESSED.labels(stage).inc(len(passed))
