"""Breaking one stage: an inference worker given a corrupt model file.

The job fails with ``error.stage == "inference"`` and a specific code, the other services keep
running, and the failure shows in the inference service's log and metrics only.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from digitflow.settings import shipped_models_dir
from tests.conftest import RedisServer
from tests.integration.test_pipeline import blank_page, heldout_digits, paper_photo
from tests.stacks import Stack, start_stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broken_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model = tmp_path_factory.mktemp("corrupt") / "digits" / "1"
    shutil.copytree(shipped_models_dir() / "digits" / "1", model)
    weights = model / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)  # garble the tensors, keep the header
    weights.write_bytes(bytes(data))
    url = redis_server.url(3)
    redis.Redis.from_url(url).flushdb()
    stack = start_stack(url, tmp_path_factory.mktemp("broken"), env={"MODEL_PATH_OVERRIDE": str(model)})
    yield stack
    stack.close()


def failed_counts(text: str) -> dict[tuple[str, str], float]:
    """``digitflow_jobs_failed_total`` samples as {(stage, code): count}."""
    counts = {}
    for line in text.splitlines():
        if line.startswith("digitflow_jobs_failed_total{"):
            labels, value = line.rsplit(" ", 1)
            pairs = dict(p.split("=", 1) for p in labels[labels.index("{") + 1 : -1].split(","))
            counts[(pairs["stage"].strip('"'), pairs["code"].strip('"'))] = float(value)
    return counts


def test_corrupt_model_fails_jobs_at_inference_only(broken_stack: Stack) -> None:
    stack = broken_stack
    jobs = [
        stack.submit(paper_photo(d, seed=i), "image/jpeg", wait=10).json() for i, (d, _) in enumerate(heldout_digits(3))
    ]
    for job in jobs:
        assert job["status"] == "failed"
        assert job["error"]["stage"] == "inference"
        assert job["error"]["code"] == "model_unavailable"
        assert "weights" in job["error"]["message"] or "model" in job["error"]["message"]
        # It got through preprocess: the failure is not blamed on an earlier stage.
        assert job["timings_ms"]["preprocess"]["run"] is not None

    # The other services keep running and keep doing their own job.
    ready = requests.get(f"{stack.base_url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.json()
    blank = stack.submit(blank_page(), "image/jpeg", wait=10).json()
    assert blank["error"]["stage"] == "preprocess"

    # The failure shows in the inference service's log and metrics ...
    inference_metrics = failed_counts(requests.get(stack.metrics_url("inference"), timeout=5).text)
    assert inference_metrics.get(("inference", "model_unavailable"), 0) >= 3
    events = stack.log_events("inference")
    assert any(e.get("event") == "model_load_failed" and e.get("error_code") == "model_unavailable" for e in events)
    failed_ids = {e.get("job_id") for e in events if e.get("event") == "job_failed"}
    assert {job["job_id"] for job in jobs} <= failed_ids
    # ... and nowhere else.
    for stage in ("preprocess", "postprocess"):
        counts = failed_counts(requests.get(stack.metrics_url(stage), timeout=5).text)
        assert not any(code == "model_unavailable" for _, code in counts), (stage, counts)
        assert not any(e.get("error_code") == "model_unavailable" for e in stack.log_events(stage))
    assert not any(e.get("error_code") == "model_unavailable" for e in stack.log_events("gateway"))
