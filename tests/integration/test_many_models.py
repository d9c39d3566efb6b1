"""Several models through one pipeline with no per-model code: digits and Fashion-MNIST side by
side, fashion on its own inference worker (``-Q inference.fashion``) that keeps one model in
memory (MAX_LOADED_MODELS=1), so pinned versions make it load and evict (LRU)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from digitflow_cli.supervisor import ServiceSpec, StackConfig, free_port, worker_spec
from tests.conftest import RedisServer
from tests.integration.models_support import cli, fashion_photo, metric, store_of, submit, sync_view, wait_for_registry
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.model_dirs import copy_of
from tests.stacks import Stack, start_stack
from training_worker.datasets import FASHION_DIR, read_idx

pytestmark = pytest.mark.slow
FASHION_PORT = free_port()


def fashion_worker(config: StackConfig) -> list[ServiceSpec]:
    extra = {"MAX_LOADED_MODELS": "1"}
    return [worker_spec(config, "inference-fashion", "inference_worker", "inference.fashion", 1, FASHION_PORT, extra)]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(10)
    redis.Redis.from_url(url).flushdb()
    env = {"DEDICATED_MODEL_QUEUES": "fashion", "TASK_EVENTS": "false"}
    stack = start_stack(url, tmp_path_factory.mktemp("many"), env, extra_specs=fashion_worker)
    try:
        wait_for_registry(stack, ("digits", "fashion"), servers=2)
        yield stack
    finally:
        stack.close()


def fashion_images(n: int) -> list[tuple[np.ndarray, int]]:
    images, labels = FASHION_DIR / "t10k-images-idx3-ubyte.gz", FASHION_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file():
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (make system-deps)")
    x, y = read_idx(images), read_idx(labels)
    idx = np.random.default_rng(3).choice(len(y), n, replace=False)
    return [(x[i], int(y[i])) for i in idx]


def test_digits_and_fashion_are_served_side_by_side(stack: Stack) -> None:
    clothes, digits = fashion_images(12), heldout_digits(12, seed=9)
    jobs = []
    for (item, label), (digit, number) in zip(clothes, digits, strict=True):
        jobs.append(("fashion", label, submit(stack, fashion_photo(item), "fashion", ctype="image/png")))
        jobs.append(("digits", number, submit(stack, paper_photo(digit), "digits")))
    assert all(j["status"] == "succeeded" for _, _, j in jobs), [j["error"] for _, _, j in jobs if j["error"]]
    for model in ("fashion", "digits"):
        mine = [(label, j) for m, label, j in jobs if m == model]
        assert all(j["model"] == {"name": model, "version": "1"} for _, j in mine)
        right = sum(j["result"]["label"] == label for label, j in mine)
        assert right >= 9, f"{model}: {right}/12 right"
    sneakers = [j for m, label, j in jobs if m == "fashion" and j["result"]["label"] == 7]
    assert all(j["result"]["class"] == "Sneaker" for j in sneakers)
    # Fashion jobs ran on the fashion worker only (its own queue); digits on the shared one only.
    on_fashion = requests.get(f"http://127.0.0.1:{FASHION_PORT}/metrics", timeout=5).text
    on_shared = requests.get(stack.metrics_url("inference"), timeout=5).text
    assert metric(on_fashion, "digitflow_jobs_processed_total", stage="inference") == 12
    assert metric(on_shared, "digitflow_jobs_processed_total", stage="inference") == 12
    assert metric(on_fashion, "digitflow_model_loaded", model="digits") == 0


def test_a_worker_keeps_at_most_max_loaded_models_and_evicts_the_least_recent(stack: Stack, tmp_path: Path) -> None:
    assert store_of(stack).register_dir("fashion", copy_of("fashion", tmp_path / "v2")) == "2"
    sync_view(stack, "fashion")
    bag = np.zeros((28, 28), np.uint8)
    bag[8:26, 5:23], bag[3:9, 10:18] = 180, 120  # any picture will do: the test counts loads
    item = fashion_photo(bag)
    # Only versions an admin marked servable may be pinned; a cold one loads off the job's path
    # (the job fails retryable `model_loading` meanwhile), so pinned jobs are retried here.
    marked = cli(stack, "models", "servable", "fashion", "2")
    assert marked.returncode == 0, marked.stderr

    def served_by(spec: str) -> str:
        for _ in range(60):
            job = submit(stack, item, spec, ctype="image/png")
            if (job.get("error") or {}).get("code") != "model_loading":
                return str(job["model"]["version"])
            time.sleep(0.25)
        raise AssertionError(f"{spec} never loaded")

    before = requests.get(f"http://127.0.0.1:{FASHION_PORT}/metrics", timeout=5).text
    served = [served_by(spec) for spec in ("fashion", "fashion@2") * 3]
    assert served == ["1", "2"] * 3
    after = requests.get(f"http://127.0.0.1:{FASHION_PORT}/metrics", timeout=5).text
    loads = metric(after, "digitflow_model_loads_total", model="fashion", outcome="loaded")
    evictions = metric(after, "digitflow_model_evictions_total", model="fashion")
    loads -= metric(before, "digitflow_model_loads_total", model="fashion", outcome="loaded")
    evictions -= metric(before, "digitflow_model_evictions_total", model="fashion")
    assert loads >= 5 and evictions >= 5, (loads, evictions)  # one version in memory at a time
    assert metric(after, "digitflow_model_loaded", model="fashion") <= 1
    evicted = [e for e in stack.log_events("inference-fashion") if e.get("event") == "model_evicted"]
    assert evicted and all(e["model"] == "fashion" for e in evicted)


def test_an_unknown_model_is_refused_before_anything_is_queued(stack: Stack) -> None:
    response = requests.post(
        f"{stack.base_url}/v1/jobs?model=shoes", data=b"x", headers={"Content-Type": "image/png"}, timeout=10
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert set(response.json()["error"]["details"]["available"]) == {"digits", "fashion"}
