"""Deployment without restarts, on a real stack: gateway, two inference processes, the registry
service and a real MLflow registry on SQLite.

In order: the shipped models are registered on first start; write actions need the admin
token; a promotion while jobs stream through loses none and switches every process; a pinned
version; rollback; a corrupt version and an unloadable one are refused while the old version
keeps serving.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from digitflow.settings import shipped_models_dir
from tests.conftest import RedisServer
from tests.integration.models_support import (
    ADMIN_TOKEN,
    AUTH,
    Stream,
    cli,
    dump,
    metric,
    production,
    store_of,
    submit,
    sync_view,
    wait_for_registry,
)
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.model_dirs import copy_of, unloadable_copy
from tests.stacks import Stack, start_stack

pytestmark = pytest.mark.slow
DIGITS = [paper_photo(d, seed=i) for i, (d, _) in enumerate(heldout_digits(12, seed=5))]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(9)
    redis.Redis.from_url(url).flushdb()
    env = {"ADMIN_TOKEN": ADMIN_TOKEN, "DEPLOY_RECHECK_S": "1", "TASK_EVENTS": "false"}
    stack = start_stack(
        url, tmp_path_factory.mktemp("deploy"), env, {"preprocess": 1, "inference": 2, "postprocess": 1}
    )
    try:
        wait_for_registry(stack, ("digits", "fashion"), servers=2)
        yield stack
    finally:
        stack.close()


def test_first_start_registers_the_shipped_models_as_production(stack: Stack) -> None:
    models = {m["name"]: m for m in requests.get(f"{stack.base_url}/v1/models", timeout=5).json()["models"]}
    assert models["digits"]["production"] == "1" and models["fashion"]["production"] == "1"
    assert models["digits"]["input_profile"] == "digits-mnist" and models["fashion"]["input_profile"] == "fashion-mnist"
    shipped = json.loads((shipped_models_dir() / "digits" / "1" / "model.json").read_text(encoding="utf-8"))
    assert models["digits"]["metrics"]["heldout_accuracy"] == pytest.approx(shipped["metrics"]["heldout_accuracy"])
    detail = requests.get(f"{stack.base_url}/v1/models/fashion", timeout=5).json()
    version = detail["versions"][0]
    assert version["labels"][7] == "Sneaker" and version["dataset"] == "fashion-mnist" and version["dataset_sha256"]
    listing = cli(stack, "models", "list")
    assert listing.returncode == 0 and "digits" in listing.stdout and "fashion-mnist" in listing.stdout, listing.stderr
    assert requests.get(f"{stack.base_url}/v1/models/nope", timeout=5).json()["error"]["code"] == "model_not_found"


def test_write_actions_need_the_admin_token(stack: Stack) -> None:
    url = f"{stack.base_url}/v1/models/digits/promote"
    assert requests.post(url, json={"version": 1}, timeout=5).status_code == 401
    wrong = requests.post(url, json={"version": 1}, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    bad = requests.post(url, json={"version": "two"}, headers=AUTH, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_promotion_under_load_switches_every_worker_and_loses_no_job(stack: Stack, tmp_path: Path) -> None:
    store = store_of(stack)
    assert store.register_dir("digits", copy_of("digits", tmp_path / "v2", "hot swap")) == "2"
    sync_view(stack, "digits")
    with Stream(stack, DIGITS, inflight=4) as stream:
        time.sleep(3)
        asked = time.time()
        answer = requests.post(
            f"{stack.base_url}/v1/models/digits/promote", json={"version": 2}, headers=AUTH, timeout=60
        )
        answered = time.time()
        time.sleep(3)
    assert answer.status_code == 200, answer.text
    promoted = answer.json()["promoted"]
    assert promoted["version"] == "2" and promoted["previous"] == "1" and len(promoted["servers"]) >= 2
    jobs = stream.jobs
    assert not stream.errors and len(jobs) > 20, (stream.errors, len(jobs))
    assert [j for _, _, j in jobs if j["status"] != "succeeded"] == []
    versions = [j["model"]["version"] for _, _, j in jobs]
    assert set(versions) == {"1", "2"}  # every job names exactly one version: the old or the new
    assert all(j["model"]["version"] == "1" for _, done, j in jobs if done < asked)
    after = [j for sent, _, j in jobs if sent > answered]
    assert after and all(j["model"]["version"] == "2" for j in after)
    assert promoted["lagging"] == [] and set(promoted["swap_ms"]) == set(promoted["servers"])
    took, load_ms, swap_ms = (
        (answered - asked) * 1000,
        max(promoted["load_ms"].values()),
        max(promoted["swap_ms"].values()),
    )
    dump(stack.config.var_dir / "swap.json", {"promote_ms": round(took), **promoted, "jobs": len(jobs)})
    print(
        f"\nhot swap: promote answered in {took:.0f} ms; slowest process: load {load_ms:.0f} ms, swap {swap_ms:.1f} ms"
    )
    assert production(stack, "digits") == "2" and store.alias("digits") == "2"


def test_a_pinned_version_serves_beside_production(stack: Stack) -> None:
    # Only servable versions may be pinned: version 1 is no longer production until an admin marks it.
    assert submit(stack, DIGITS[0], "digits@1")["error"]["code"] == "version_not_servable"
    marked = requests.post(
        f"{stack.base_url}/v1/models/digits/servable", json={"version": 1, "servable": True}, headers=AUTH, timeout=60
    )
    assert marked.status_code == 200 and marked.json()["servable"]["servable"] == ["1"], marked.text
    assert submit(stack, DIGITS[0], "digits@1")["model"] == {"name": "digits", "version": "1"}
    assert submit(stack, DIGITS[1], "digits")["model"] == {"name": "digits", "version": "2"}
    missing = requests.post(
        f"{stack.base_url}/v1/jobs?model=digits@99", data=DIGITS[0], headers={"Content-Type": "image/jpeg"}, timeout=10
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_rollback_returns_to_the_previous_version(stack: Stack) -> None:
    answer = requests.post(f"{stack.base_url}/v1/models/digits/rollback", headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["rolled_back"]["version"] == "1" and production(stack, "digits") == "1"
    assert submit(stack, DIGITS[2], "digits")["model"]["version"] == "1"
    again = cli(stack, "models", "rollback", "digits")
    assert again.returncode == 1 and "no_previous_version" in again.stderr, again.stderr


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(stack: Stack, tmp_path: Path) -> None:
    store = store_of(stack)
    version = store.register_dir("digits", copy_of("digits", tmp_path / "v3", "to be corrupted"))
    # The stored artifact is damaged after registration (a bad disk, a botched copy).
    weights = (
        Path(store.location(str(store.client.get_model_version("digits", version).source)).removeprefix("file://"))
        / "weights.safetensors"
    )
    weights.write_bytes(weights.read_bytes()[:-512] + bytes(512))
    sync_view(stack, "digits")
    answer = requests.post(
        f"{stack.base_url}/v1/models/digits/promote", json={"version": int(version)}, headers=AUTH, timeout=60
    )
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "model_version_invalid", answer.text
    assert production(stack, "digits") == "1" and store.alias("digits") == "1"
    assert submit(stack, DIGITS[3], "digits")["model"]["version"] == "1"


def test_an_unloadable_version_is_rejected_by_the_workers_and_rolled_back(stack: Stack, tmp_path: Path) -> None:
    store = store_of(stack)
    version = store.register_dir("digits", unloadable_copy("digits", tmp_path / "v4"))
    sync_view(stack, "digits")
    result = cli(stack, "models", "promote", "digits", version)
    assert result.returncode == 1 and "deploy_failed" in result.stderr, (result.stdout, result.stderr)
    details = json.loads(result.stderr[result.stderr.index("{") :])
    assert details["production"] == "1" and all("fc2.weight" in e or "fit" in e for e in details["errors"].values())
    assert production(stack, "digits") == "1" and store.alias("digits") == "1" and store.history("digits") == ["1"]
    jobs = [submit(stack, d, "digits") for d in DIGITS[:4]]
    assert all(j["status"] == "succeeded" and j["model"]["version"] == "1" for j in jobs)
    text = requests.get(stack.metrics_url("inference"), timeout=5).text
    assert metric(text, "digitflow_model_deploys_total", model="digits", outcome="failed") >= 2
    assert any(e.get("event") == "model_deploy_failed" for e in stack.log_events("inference"))
