"""Canary and shadow releases end to end on a real stack: gateway, two inference processes,
postprocess, the registry service on a real MLflow registry, the monitor and its beat.

In order, on one stack: an admin's candidate serves its share of live jobs (each job by its id)
and is held (no suite results) until an admin aborts it; a deliberately bad candidate is
retired by the monitor with the reason; a candidate released the way the trainer releases one
(suite results, shadow mode) answers nothing, is logged beside production and is promoted
automatically; an admin promotes a candidate by hand; only servable versions can be pinned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from digitflow.celery_app import make_celery
from digitflow.model_files import METADATA_FILE, WEIGHTS_FILE, sha256_file
from digitflow.model_spec import routes_to_candidate
from digitflow.model_view import read_entry
from digitflow.predlog import SHADOW_SUFFIX, PredictionLog
from digitnet.loading import load_model
from tests.conftest import RedisServer, wait_until
from tests.integration.models_support import ADMIN_TOKEN, AUTH, cli, store_of, submit_with, sync_view, wait_for_registry
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.model_dirs import SHIPPED, copy_of
from tests.stacks import Stack, start_stack
from training_worker.settings import TrainingSettings
from training_worker.suites import GATE_POPULATIONS, evaluate_suites, suite_gate, suites
from training_worker.tasks import registry_service

pytestmark = pytest.mark.slow
MIN_CANARY_JOBS = 50
ENV = {
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "DEPLOY_RECHECK_S": "1",
    "TASK_EVENTS": "false",
    "MONITOR_INTERVAL_S": "1",
    "AUTO_RETRAIN": "false",
    "MIN_JOBS": "10",
    "SAMPLE_SIZE": "20",
    "PERMUTATIONS": "20",
    "MIN_CANARY_JOBS": str(MIN_CANARY_JOBS),
    "CANARY_MARGIN": "0.05",
}
DIGITS = heldout_digits(120, seed=11)
PHOTOS = [paper_photo(d, seed=i) for i, (d, _) in enumerate(DIGITS)]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(10)
    redis.Redis.from_url(url).flushdb()
    s = start_stack(
        url,
        tmp_path_factory.mktemp("canary"),
        ENV,
        {"preprocess": 1, "inference": 2, "postprocess": 1},
        monitoring=True,
    )
    try:
        wait_for_registry(s, ("digits",), servers=2)
        yield s
    finally:
        s.close()
        redis.Redis.from_url(url).flushdb()


def bad_copy(dst: Path) -> Path:
    """Intact, loadable weights whose output layer names the wrong class (i -> i+1): every
    answer is confidently wrong, which only feedback reveals."""
    from safetensors.torch import load_file, save_file

    copy_of("digits", dst, "wrong classes")
    state = load_file(str(dst / WEIGHTS_FILE))
    for key in ("fc2.weight", "fc2.bias"):
        state[key] = state[key].roll(1, dims=0).contiguous()
    save_file(state, str(dst / WEIGHTS_FILE))
    meta = json.loads((dst / METADATA_FILE).read_text())
    meta["weights_sha256"] = sha256_file(dst / WEIGHTS_FILE)
    (dst / METADATA_FILE).write_text(json.dumps(meta))
    return dst


def register(stack: Stack, folder: Path) -> str:
    version = store_of(stack).register_dir("digits", folder)
    sync_view(stack, "digits")
    return version


def traffic(stack: Stack, n: int, feedback: bool = True, model: str = "digits") -> list[dict[str, Any]]:
    """``n`` photo jobs from 4 clients, each then labelled with its true digit."""

    def one(i: int) -> dict[str, Any]:
        with requests.Session() as session:
            job = submit_with(session, stack, PHOTOS[i % len(PHOTOS)], model)
            if feedback and job.get("status") == "succeeded":
                url = f"{stack.base_url}/v1/jobs/{job['job_id']}/feedback"
                session.post(url, json={"label": DIGITS[i % len(DIGITS)][1]}, timeout=10).raise_for_status()
            return job

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def canary(stack: Stack) -> dict[str, Any]:
    return stack.session.get(f"{stack.base_url}/v1/models/digits/canary", timeout=10).json()


def last_release(stack: Stack) -> dict[str, Any]:
    return canary(stack)["releases"][-1]


def view(stack: Stack) -> dict[str, Any]:
    entry = read_entry(redis.Redis.from_url(stack.config.redis_url), "digits")
    assert entry is not None
    return entry


def test_an_admin_candidate_serves_its_share_is_held_and_aborted(stack: Stack, tmp_path: Path) -> None:
    version = register(stack, copy_of("digits", tmp_path / "v2", "canary"))
    started = requests.post(
        f"{stack.base_url}/v1/models/digits/canary", json={"version": 2, "share": 0.3}, headers=AUTH, timeout=60
    )
    assert started.status_code == 200, started.text
    assert len(started.json()["candidate"]["warmed"]["servers"]) == 2  # both processes loaded it first
    entry = view(stack)
    assert entry["aliases"] == {"production": "1", "candidate": version} and entry["canary"]["share"] == 0.3

    jobs = traffic(stack, 240)
    assert all(j["status"] == "succeeded" for j in jobs), [j for j in jobs if j["status"] != "succeeded"][:2]
    served = {j["job_id"]: j["model"]["version"] for j in jobs}
    # The candidate serves exactly the jobs its share picks by job id, and production the rest.
    assert all(routes_to_candidate(job_id, 0.3) for job_id, v in served.items() if v == "2")
    assert all(v == "1" for job_id, v in served.items() if not routes_to_candidate(job_id, 0.3))
    share = sum(v == "2" for v in served.values()) / len(served)
    assert 0.2 < share < 0.4, share
    print(f"\ncanary share 0.3: the candidate served {share:.3f} of {len(served)} jobs")

    # The monitor compares it with production, finds it not worse, and holds it: started by
    # hand, it has no suite results, so only an admin decides.
    def held() -> bool:
        state = canary(stack)["canary"] or {}
        numbers = state.get("numbers") or {"candidate": {"jobs": 0}, "production": {"jobs": 0}}
        return state.get("decision") == "hold" and numbers["candidate"]["jobs"] + numbers["production"]["jobs"] >= 240

    try:
        wait_until(held, 60, 0.5, what="a held canary over every job sent")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {json.dumps(canary(stack), default=str)[:2500]}") from None
    state = canary(stack)["canary"]
    cand, prod = state["numbers"]["candidate"], state["numbers"]["production"]
    assert cand["jobs"] == sum(v == "2" for v in served.values()) >= MIN_CANARY_JOBS
    assert cand["labelled"] >= 20 and cand["accuracy"] > 0.9 and prod["accuracy"] > 0.9
    shown = cli(stack, "models", "canary", "digits")
    assert shown.returncode == 0, shown.stderr
    assert "candidate 2: canary, 30% of live jobs" in shown.stdout and "decision: hold" in shown.stdout, shown.stdout
    assert "accuracy" in shown.stdout and "suites: none recorded" in shown.stdout

    aborted = requests.post(
        f"{stack.base_url}/v1/models/digits/canary/abort", json={"reason": "enough"}, headers=AUTH, timeout=60
    )
    assert aborted.status_code == 200, aborted.text
    record = last_release(stack)
    assert record["version"] == "2" and record["outcome"] == "aborted" and record["reason"] == "enough"
    assert canary(stack)["canary"] is None and "candidate" not in view(stack)["aliases"]
    assert {j["model"]["version"] for j in traffic(stack, 20, feedback=False)} == {"1"}
    again = requests.post(f"{stack.base_url}/v1/models/digits/canary/abort", headers=AUTH, timeout=60)
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_candidate"


def test_a_worse_candidate_is_retired_by_the_monitor_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    version = register(stack, bad_copy(tmp_path / "v3"))
    started = cli(stack, "models", "candidate", "digits", version, "--share", "0.5")
    assert started.returncode == 0, started.stderr
    jobs = traffic(stack, 160)
    assert {j["model"]["version"] for j in jobs} == {"1", version}
    wait_until(lambda: last_release(stack)["version"] == version, 90, 0.5, what="the bad candidate retired")
    record = last_release(stack)
    assert record["outcome"] == "retired" and record["by"] == "monitor", record
    assert record["reason"].startswith("worse than production") and "accuracy" in record["reason"], record
    assert record["numbers"]["candidate"]["accuracy"] < 0.5 < record["numbers"]["production"]["accuracy"]
    assert view(stack)["aliases"] == {"production": "1"}
    assert {j["model"]["version"] for j in traffic(stack, 20, feedback=False)} == {"1"}


def test_a_released_retrain_runs_in_shadow_and_is_promoted_automatically(stack: Stack, tmp_path: Path) -> None:
    version = register(stack, copy_of("digits", tmp_path / "v4", "retrained"))
    # As the trainer does: the fixed suites, candidate against production, then a release.
    fixed = suites("digits")
    production = load_model(SHIPPED / "digits" / "1", device="cpu").net
    candidate = load_model(tmp_path / "v4", device="cpu").net
    record = suite_gate(evaluate_suites(candidate, fixed), evaluate_suites(production, fixed), 0.01)
    assert record["passed"] and set(record["suites"]) == {"mnist_heldout", "mnist_heldout_augmented", *GATE_POPULATIONS}
    settings = TrainingSettings(redis_url=stack.config.redis_url, canary_mode="shadow", heartbeat_ttl_s=3.0)
    release, _ = registry_service(make_celery("test-trainer", settings), settings)
    answer = release("digits", version, record)
    assert answer["candidate"]["mode"] == "shadow" and answer["candidate"]["suites"]["passed"]
    tags = store_of(stack).client.get_model_version("digits", version).tags
    assert json.loads(tags["digitflow.suites"])["passed"] is True  # the results travel with the version

    jobs = traffic(stack, MIN_CANARY_JOBS - 10)  # fewer than the decision needs: nothing moves yet
    # In shadow the candidate answers no job: production does, the candidate's answer is logged.
    assert {j["model"]["version"] for j in jobs} == {"1"}
    log = PredictionLog(f"sqlite:///{stack.config.var_dir / 'predictions.db'}")
    try:
        wait_until(lambda: log.get(jobs[-1]["job_id"] + SHADOW_SUFFIX) is not None, 30, 0.3, what="shadow rows")
        shadows = [log.get(j["job_id"] + SHADOW_SUFFIX) for j in jobs]
        assert all(r is not None and r.version == version for r in shadows)
        assert sum(r.true_label is not None for r in shadows if r is not None) >= 30  # feedback reaches them
        assert all(log.get(j["job_id"]).version == "1" for j in jobs)  # type: ignore[union-attr]
    finally:
        log.close()
    assert canary(stack)["canary"]["version"] == version
    traffic(stack, 30)
    wait_until(lambda: view(stack)["aliases"].get("production") == version, 90, 0.5, what="automatic promotion")
    record = last_release(stack)
    assert (
        record["outcome"] == "promoted"
        and record["by"] == "monitor"
        and "passed the evaluation suites" in record["reason"]
    )
    assert {j["model"]["version"] for j in traffic(stack, 20, feedback=False)} == {version}


def test_an_admin_promotes_a_candidate_and_only_servable_versions_can_be_pinned(stack: Stack) -> None:
    assert view(stack)["aliases"]["production"] == "4"
    refused = requests.post(
        f"{stack.base_url}/v1/jobs?model=digits@2", data=PHOTOS[0], headers={"Content-Type": "image/jpeg"}, timeout=10
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "version_not_servable", refused.text
    marked = cli(stack, "models", "servable", "digits", "2")
    assert marked.returncode == 0, marked.stderr
    # Every process loaded it when it was marked: the pin is served at once, not "model_loading".
    assert {j["model"]["version"] for j in traffic(stack, 8, feedback=False, model="digits@2")} == {"2"}

    started = cli(stack, "models", "candidate", "digits", "1", "--share", "0.2")
    assert started.returncode == 0, started.stderr
    promoted = requests.post(f"{stack.base_url}/v1/models/digits/canary/promote", headers=AUTH, timeout=60)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["promoted"]["version"] == "1" and view(stack)["aliases"] == {"production": "1"}
    record = last_release(stack)
    assert record["outcome"] == "promoted" and record["by"] == "admin"
    assert {j["model"]["version"] for j in traffic(stack, 10, feedback=False)} == {"1"}
    # Version 4, production a moment ago, is no longer pinnable; 2 still is.
    assert canary(stack)["servable"] == ["1", "2"]
