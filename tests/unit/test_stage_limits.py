"""Stage time limits: below the visibility timeout or refused at start, and set on the stage
tasks only (registry, monitor and training tasks may run for minutes)."""

from __future__ import annotations

import pytest
from celery.utils.saferepr import saferepr

from digitflow.celery_app import RESULT_REPR_CHARS, make_celery
from digitflow.errors import ConfigurationError
from digitflow.messages import make_batch
from digitflow.settings import GatewaySettings, WorkerSettings
from digitflow.tasks import INFERENCE, MONITOR_RUN, POSTPROCESS, PREPROCESS, TRAINING_RETRAIN


def test_default_limits_sit_below_the_visibility_timeout() -> None:
    settings = WorkerSettings()
    assert (settings.soft_time_limit_s, settings.hard_time_limit_s, settings.visibility_timeout_s) == (15.0, 24.0, 30)
    quick = WorkerSettings(visibility_timeout_s=8)
    assert (quick.soft_time_limit_s, quick.hard_time_limit_s) == (4.0, 6.4)


@pytest.mark.parametrize(
    "env",
    [
        {"STAGE_TIME_LIMIT_S": "30"},
        {"STAGE_TIME_LIMIT_S": "45"},
        {"STAGE_SOFT_TIME_LIMIT_S": "30", "STAGE_TIME_LIMIT_S": "29"},
        {"STAGE_SOFT_TIME_LIMIT_S": "25"},  # above the automatic hard limit (24 s)
        {"STAGE_SOFT_TIME_LIMIT_S": "-1"},
        {"VISIBILITY_TIMEOUT_S": "10", "STAGE_TIME_LIMIT_S": "12"},
    ],
)
def test_limits_at_or_past_the_visibility_timeout_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="VISIBILITY_TIMEOUT_S"):
        WorkerSettings.from_env(env)


def echo(batch: object) -> object:
    return batch


def test_only_stage_tasks_get_the_limits() -> None:
    app = make_celery("test", WorkerSettings.from_env({"STAGE_SOFT_TIME_LIMIT_S": "5", "STAGE_TIME_LIMIT_S": "9"}))
    for name in (PREPROCESS, INFERENCE, POSTPROCESS, MONITOR_RUN, TRAINING_RETRAIN):
        app.task(name=name)(echo)
    app.finalize()
    for name in (PREPROCESS, INFERENCE, POSTPROCESS):
        assert (app.tasks[name].soft_time_limit, app.tasks[name].time_limit) == (5.0, 9.0)
        # Celery reprs each return value (the next hop's batch) for its log line and event: briefly.
        assert app.tasks[name].resultrepr_maxsize == RESULT_REPR_CHARS
    for name in (MONITOR_RUN, TRAINING_RETRAIN):
        assert (app.tasks[name].soft_time_limit, app.tasks[name].time_limit) == (None, None)
    batch = make_batch("b4", [{"job_id": "d" * 32, "model": "digits", "logits": [0.123456] * 10}] * 32)
    brief = saferepr(batch, app.tasks[INFERENCE].resultrepr_maxsize)
    assert len(brief) < 2 * RESULT_REPR_CHARS < len(saferepr(batch, 1024)) and "'batch_id': 'b4'" in brief


def test_default_pixel_limits() -> None:
    assert GatewaySettings().max_image_pixels == WorkerSettings().max_image_pixels == 12_000_000
    assert GatewaySettings().max_request_pixels == 48_000_000
    with pytest.raises(ConfigurationError, match="MAX_REQUEST_PIXELS"):
        GatewaySettings.from_env({"MAX_IMAGE_PIXELS": "50000000"})
