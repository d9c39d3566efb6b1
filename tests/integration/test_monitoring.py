"""Monitoring with real workers: the outlier detector's verdict in results, one prediction-log
row per finished job (SQLite), feedback validation, and the monitor's report over HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from digitflow.predlog import PredictionLog
from digitflow.redis_client import connect
from digitflow.reference import load_reference
from digitflow.settings import MonitorSettings, shipped_models_dir
from monitor_worker.references import References
from monitor_worker.report import WINDOWS
from monitor_worker.tasks import run_monitor
from tests.conftest import RedisServer, wait_until
from tests.integration.models_support import submit, wait_for_registry
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.stacks import Stack, start_stack


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(7)
    connect(url).flushdb()
    s = start_stack(url, tmp_path_factory.mktemp("monitoring"))
    wait_for_registry(s, ("digits",), 1)
    yield s
    s.close()
    connect(url).flushdb()


def noise_png(seed: int = 0) -> bytes:
    """Dark random speckle filling the middle of a white page: ink, but no digit."""
    rng = np.random.default_rng(seed)
    page = np.full((200, 200), 250, np.uint8)
    page[40:160, 40:160] = np.where(rng.random((120, 120)) < 0.5, 20, 250)
    out = io.BytesIO()
    Image.fromarray(page).save(out, "PNG")
    return out.getvalue()


def feedback(stack: Stack, job_id: str, body: object) -> requests.Response:
    return stack.session.post(f"{stack.base_url}/v1/jobs/{job_id}/feedback", json=body, timeout=10)


def log_of(stack: Stack) -> PredictionLog:
    return PredictionLog(f"sqlite:///{stack.config.var_dir / 'predictions.db'}")


def test_detector_scores_jobs_and_every_job_is_logged(stack: Stack) -> None:
    digits = heldout_digits(12, seed=5)
    jobs = [submit(stack, paper_photo(img, seed=i), "digits") for i, (img, _) in enumerate(digits)]
    noises = [submit(stack, noise_png(seed), "digits", ctype="image/png") for seed in range(5)]
    assert all(j["status"] == "succeeded" for j in [*jobs, *noises]), noises
    threshold = jobs[0]["result"]["outlier_threshold"]
    shipped = load_reference(shipped_models_dir() / "digits" / "1")
    assert shipped is not None and threshold == pytest.approx(shipped.threshold, abs=1e-4)  # digits/1's detector
    inliers = sum(not j["result"]["outlier"] for j in jobs)
    assert inliers >= 10, [j["result"]["outlier_score"] for j in jobs]
    # Calibrated to pass 97% of realistic digit uploads, the detector flags most speckle pages.
    flagged = [n for n in noises if n["result"]["outlier"] is True and n["result"]["outlier_score"] > threshold]
    assert len(flagged) >= 4, [n["result"]["outlier_score"] for n in noises]
    log = log_of(stack)
    wait_until(lambda: all(log.get(j["job_id"]) is not None for j in jobs), 10, what="prediction-log rows")
    row = log.get(jobs[0]["job_id"])
    assert row is not None and len(row.pixels) == 784 and len(row.embedding) == 256
    assert row.version == "1" and row.label == jobs[0]["result"]["label"] and 0 < row.ink_ratio < 1
    # The job's result shows the score rounded to 4 decimals; the log keeps it unrounded.
    assert row.calibrated is not None and row.outlier_score == pytest.approx(
        jobs[0]["result"]["outlier_score"], rel=1e-3, abs=1e-4
    )


def test_feedback_is_validated_and_idempotent(stack: Stack) -> None:
    img, label = heldout_digits(1, seed=9)[0]
    job = submit(stack, paper_photo(img), "digits")
    wait_until(lambda: log_of(stack).get(job["job_id"]) is not None, 10, what="the job's row")
    ok = feedback(stack, job["job_id"], {"label": label})
    assert ok.status_code == 200 and ok.json() == {"job_id": job["job_id"], "label": label, "recorded": True}
    assert feedback(stack, job["job_id"], {"label": label}).status_code == 200
    assert feedback(stack, job["job_id"], {"label": (label + 1) % 10}).status_code == 200
    row = log_of(stack).get(job["job_id"])
    assert row is not None and row.true_label == (label + 1) % 10
    for bad in ({}, {"label": "7"}, {"label": 10}, {"label": -1}, {"label": True}, [7]):
        answer = feedback(stack, job["job_id"], bad)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request", bad
    missing = feedback(stack, "0" * 32, {"label": 1})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    blank = submit(stack, blank_page_png(), "digits", ctype="image/png")
    assert blank["status"] == "failed"
    gone = feedback(stack, blank["job_id"], {"label": 1})
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "input_gone"


def blank_page_png() -> bytes:
    """A blank page: fails at preprocess (no_ink), so it is never logged."""
    out = io.BytesIO()
    Image.new("L", (200, 200), 240).save(out, "PNG")
    return out.getvalue()


def test_monitor_report_over_http(stack: Stack, tmp_path: Path) -> None:
    digits = heldout_digits(20, seed=11)
    for i, (img, label) in enumerate(digits):
        job = submit(stack, paper_photo(img, seed=100 + i), "digits")
        wait_until(lambda j=job: log_of(stack).get(j["job_id"]) is not None, 10, what="row")
        assert feedback(stack, job["job_id"], {"label": label}).status_code == 200
    s = MonitorSettings(
        redis_url=stack.config.redis_url,
        var_dir=stack.config.var_dir,
        mlflow_tracking_uri=stack.config.tracking_uri,
        min_jobs=10,
    )
    client = connect(s.redis_url)
    run_monitor(s, client, log_of(stack), References(s), ["digits"])
    body = stack.session.get(f"{stack.base_url}/v1/monitoring/digits", timeout=10).json()
    assert body["model"] == "digits" and set(body["thresholds"]) == {"p_value", "psi", "accuracy_drop", "outlier_rate"}
    (version,) = body["versions"]
    assert version["version"] == "1" and version["production"] is True
    shipped_ref = load_reference(shipped_models_dir() / "digits" / "1")
    assert shipped_ref is not None and version["reference"]["heldout_accuracy"] == shipped_ref.meta["heldout_accuracy"]
    assert set(version["windows"]) == set(WINDOWS)
    hour = version["windows"]["1h"]
    assert hour["jobs"] >= 20 and hour["labelled"] >= 20 and hour["accuracy"] >= 0.85
    assert 0.5 < hour["estimated_accuracy"] <= 1 and len(hour["class_mix"]) == 10
    assert {"chi2", "p_value", "psi", "alert"} <= set(hour["prediction_drift"])
    assert {"ink_ratio", "mean_intensity", "aspect", "embedding_mmd", "alert"} <= set(hour["input_drift"])
    assert version["series"] and version["series"][-1]["jobs"] >= 1
    assert [a["age"] for a in version["accuracy_by_age"]] == ["day 1", "week 1", "month 1", "quarter 1"]
    assert body["retraining"] == []
    unknown = stack.session.get(f"{stack.base_url}/v1/monitoring/nope", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
