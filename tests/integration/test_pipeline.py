"""The whole chain with real Redis and real worker processes (no eager mode).

One stack serves the module: digits photographed on paper are classified end to end, a failure
in each stage is attributed to that stage, and readiness names a stage with no live worker.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageFilter

from digitflow.celery_app import make_celery
from digitflow.messages import make_batch
from digitflow.settings import CoreSettings
from tests.conftest import RedisServer, wait_until
from tests.model_dirs import MNIST_NPZ
from tests.stacks import Stack, start_stack

ROOT = Path(__file__).resolve().parents[2]


def heldout_digits(n: int, seed: int = 1) -> list[tuple[np.ndarray, int]]:
    data = np.load(MNIST_NPZ)
    idx = np.random.default_rng(seed).choice(data["heldout_idx"], n, replace=False)
    return [(data["images"][i], int(data["labels"][i])) for i in idx]


def paper_photo(digit: np.ndarray, size: int = 320, seed: int = 0) -> bytes:
    """A held-out MNIST digit as a phone photo: dark ink on uneven off-white paper, JPEG."""
    rng = np.random.default_rng(seed)
    ink = (
        np.asarray(Image.fromarray(digit).resize((size // 2, size // 2), Image.Resampling.BICUBIC), dtype=np.float32)
        / 255
    )
    canvas = np.zeros((size, size), np.float32)
    off = size // 4
    canvas[off : off + size // 2, off : off + size // 2] = ink
    yy, xx = np.mgrid[0:size, 0:size] / size
    paper = 200 + 35 * xx - 20 * yy + rng.normal(0, 4, (size, size))
    pixels = np.clip(paper * (1 - 0.8 * canvas), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.0)).convert("RGB")
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=82)
    return out.getvalue()


def blank_page() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 300), (235, 235, 230)).save(out, "JPEG", quality=90)
    return out.getvalue()


def undecodable_png() -> bytes:
    """Valid PNG header and IEND, garbled pixel data: only a full decode finds out."""
    out = io.BytesIO()
    Image.fromarray(heldout_digits(1)[0][0]).resize((200, 200)).save(out, "PNG")
    data = bytearray(out.getvalue())
    start = data.index(b"IDAT") + 20
    data[start : start + 64] = bytes(range(64))
    return bytes(data)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(2)
    import redis

    redis.Redis.from_url(url).flushdb()
    stack = start_stack(url, tmp_path_factory.mktemp("stack"))
    yield stack
    stack.close()


def test_digit_photos_are_classified_end_to_end(stack: Stack) -> None:
    digits = heldout_digits(20)
    ids = [stack.submit(paper_photo(d, seed=i), "image/jpeg").json()["job_id"] for i, (d, _) in enumerate(digits)]
    jobs = [stack.job(job_id, wait=20) for job_id in ids]
    assert all(j["status"] == "succeeded" for j in jobs), [j["error"] for j in jobs if j["status"] != "succeeded"]
    correct = sum(j["result"]["label"] == label for j, (_, label) in zip(jobs, digits, strict=True))
    assert correct >= 18, f"only {correct}/20 photographed held-out digits right"
    job = jobs[0]
    assert job["model"]["name"] == "digits" and job["model"]["version"]
    assert len(job["result"]["probabilities"]) == 10
    for stage in ("preprocess", "inference", "postprocess"):
        assert job["timings_ms"][stage]["queue"] >= 0 and job["timings_ms"][stage]["run"] >= 0
    assert job["timings_ms"]["total"] > 0
    assert job["finished_at"] >= job["created_at"]


def test_prefer_wait_answers_in_one_round_trip(stack: Stack) -> None:
    digit, label = heldout_digits(1, seed=7)[0]
    response = stack.submit(paper_photo(digit), "image/jpeg", wait=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded" and body["result"]["label"] == label


def test_preprocess_failures_are_attributed_to_preprocess(stack: Stack) -> None:
    blank = stack.submit(blank_page(), "image/jpeg", wait=10).json()
    assert blank["status"] == "failed"
    assert blank["error"]["stage"] == "preprocess" and blank["error"]["code"] == "no_ink"
    broken = stack.submit(undecodable_png(), "image/png", wait=10).json()
    assert broken["status"] == "failed"
    assert broken["error"]["stage"] == "preprocess" and broken["error"]["code"] == "invalid_image"


def test_one_bad_image_fails_only_its_own_job(stack: Stack) -> None:
    digit, label = heldout_digits(1, seed=3)[0]
    files = [("image", ("a.jpg", paper_photo(digit), "image/jpeg")), ("image", ("b.jpg", blank_page(), "image/jpeg"))]
    response = requests.post(f"{stack.base_url}/v1/jobs", files=files, headers={"Prefer": "wait=10"}, timeout=30)
    assert response.status_code == 200
    good, bad = response.json()["jobs"]
    assert good["status"] == "succeeded" and good["result"]["label"] == label
    assert bad["status"] == "failed" and bad["error"]["code"] == "no_ink"


def test_postprocess_failure_is_attributed_to_postprocess(stack: Stack, redis_server: RedisServer) -> None:
    """A malformed message reaching the last stage fails the job there, with a code."""
    accepted = stack.submit(paper_photo(heldout_digits(1)[0][0]), "image/jpeg", wait=10).json()
    assert accepted["status"] == "succeeded"
    # A second job whose record exists but whose message to postprocess has no logits.
    import redis as redis_lib

    client = redis_lib.Redis.from_url(stack.config.redis_url)
    job_id = "f" * 32
    client.hset(f"df:job:{job_id}", mapping={"status": "inferring", "model": "digits", "created_at": "1.0"})
    app = make_celery("test", CoreSettings(redis_url=stack.config.redis_url))
    app.send_task(
        "postprocess.run", args=(make_batch("x", [{"job_id": job_id, "model": "digits"}]),), queue="postprocess"
    )
    wait_until(lambda: client.hget(f"df:job:{job_id}", "status") == b"failed", 15, what="postprocess to fail the job")
    job = stack.job(job_id)
    assert job["error"]["stage"] == "postprocess" and job["error"]["code"] == "invalid_message"


def test_metrics_and_logs_of_each_stage(stack: Stack) -> None:
    stack.submit(paper_photo(heldout_digits(1)[0][0]), "image/jpeg", wait=10)
    for stage in ("preprocess", "inference", "postprocess"):
        text = requests.get(stack.metrics_url(stage), timeout=5).text
        assert f'digitflow_jobs_processed_total{{stage="{stage}"}}' in text
        assert f'digitflow_stage_duration_seconds_count{{stage="{stage}"}}' in text
        events = stack.log_events(stage)
        done = [e for e in events if e.get("event") == "batch_done"]
        assert done and all(e["service"] == stage and e["stage"] == stage for e in done)
    gateway = requests.get(f"{stack.base_url}/metrics", timeout=5).text
    assert 'digitflow_live_workers{stage="inference"} 1.0' in gateway


def test_readiness_names_the_stage_without_a_live_worker(stack: Stack) -> None:
    """Last in the module: it stops the postprocess worker."""
    assert requests.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200
    stack.supervisor.stop("postprocess")
    deadline_body: dict[str, object] = {}

    def not_ready() -> bool:
        response = requests.get(f"{stack.base_url}/readyz", timeout=5)
        deadline_body.update(response.json())
        return response.status_code == 503

    wait_until(not_ready, 15, what="readiness to go false")
    assert deadline_body["missing_stages"] == ["postprocess"]
    assert deadline_body["redis"] is True
