"""Thin Celery task of the preprocess stage: fetch each job's image, make its 28x28 input."""

from __future__ import annotations

import os
import signal
import time

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from digitflow.errors import DigitflowError, InvalidImageError, UnsupportedProfileError
from digitflow.jobs import JobStore
from digitflow.messages import Batch, Item
from digitflow.model_files import DIGITS_PROFILE, FASHION_PROFILE
from digitflow.reference import ink_stats
from digitflow.settings import WorkerSettings
from digitflow.stage import run_stage, stage_timeout
from digitflow.tasks import PREPROCESS
from digitflow.worker_runtime import ProcessResources, forward
from preprocess_worker.steps import preprocess
from preprocess_worker.steps_fashion import preprocess_fashion

# Each model's input profile (from the registry, carried in the job's item) picks its steps.
PROFILES = {DIGITS_PROFILE: preprocess, FASHION_PROFILE: preprocess_fashion}


class ImageMissingError(InvalidImageError):
    """The parked upload is gone (expired or already consumed by a finished job)."""

    code = "image_missing"


def preprocess_items(
    items: list[Item],
    store: JobStore,
    max_pixels: int,
    crash_marker: bytes = b"",
    delay_marker: bytes = b"",
    delay_s: float = 0.0,
) -> list[Item | DigitflowError]:
    """Each job's image, fetched as its turn comes (JobStore.image says why not all at once),
    then pure image work.

    At the task's soft time limit the item being decoded and those after it fail with
    ``stage_timeout``; the items already done keep their results.
    """
    out: list[Item | DigitflowError] = []
    try:
        for item in items:
            data = store.image(item["job_id"])
            out.append(_one(item, data, max_pixels, crash_marker, delay_marker, delay_s))
    except SoftTimeLimitExceeded:
        out += [stage_timeout("preprocess")] * (len(items) - len(out))
    return out


def _one(
    item: Item, data: bytes | None, max_pixels: int, crash_marker: bytes, delay_marker: bytes, delay_s: float
) -> Item | DigitflowError:
    if data is None:
        return ImageMissingError("the uploaded image is no longer stored")
    if crash_marker and crash_marker in data:
        os.abort()  # fault injection (FAULT_CRASH_MARKER): behave like a crashing decoder
    if delay_marker and delay_marker in data:
        # Fault injection (FAULT_DELAY_MARKER): behave like a slow decoder, or, with ":stuck"
        # after the marker, like one stuck in C code, which the soft limit's signal cannot reach
        # (SIGUSR1 from prefork's billiard, SIGALRM from digitflow/solo_limits.py).
        if delay_marker + b":stuck" in data:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGALRM})
        time.sleep(delay_s)
    profile = item.get("profile") or DIGITS_PROFILE
    steps = PROFILES.get(profile)
    if steps is None:
        return UnsupportedProfileError(f"no preprocessing for input profile {profile!r}", profile=profile[:64])
    try:
        result: Item = {"job_id": item["job_id"], "model": item["model"], "pixels": steps(data, max_pixels)}
    except DigitflowError as exc:
        return exc
    result["ink"] = [round(v, 5) for v in ink_stats(result["pixels"])]  # for the prediction log
    if item.get("pin"):
        result["pin"] = item["pin"]
    return result


def register_tasks(app: Celery, settings: WorkerSettings) -> None:
    resources = ProcessResources(settings)
    crash_marker = settings.fault_crash_marker.encode()
    delay_marker = settings.fault_delay_marker.encode()
    delay_s = 2.0 * settings.visibility_timeout_s  # longer than any time limit the settings allow

    @app.task(name=PREPROCESS, bind=True)
    def run(self: Task, batch: Batch) -> Batch:
        def step(items: list[Item]) -> list[Item | DigitflowError]:
            return preprocess_items(
                items, resources.store, settings.max_image_pixels, crash_marker, delay_marker, delay_s
            )

        return forward(self, run_stage("preprocess", batch, resources.store, step, max_strikes=settings.max_strikes))
