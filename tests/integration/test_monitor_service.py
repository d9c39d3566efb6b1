"""The monitoring loop as ``make run`` deploys it: beat schedules ``monitor.run`` on the monitor
worker, which reports (HTTP, Prometheus gauges, the CLI table), raises a drift alert on shifted
traffic and sends ``training.retrain`` to the training worker, which retrains on the feedback,
registers version 2 with its lineage and releases it as the canary candidate (never straight
to production); live traffic shows it is not worse and the monitor promotes it to the running
fleet, no restart.

The prediction log lives in PostgreSQL where one is reachable (compose's engine), else SQLite.
Time is compressed ("1h" = 60 s) as in ``make drift-demo``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests

from bench.drift_demo import photo
from digitflow.predlog import PredictionLog
from digitflow.redis_client import connect
from tests.conftest import RedisServer, create_postgres_database, drop_postgres_database, wait_until
from tests.integration.models_support import ROOT, store_of, submit_with, wait_for_registry
from tests.stacks import Stack, start_stack
from training_worker.datasets import load_mnist_5k
from training_worker.suites import GATE_POPULATIONS

pytestmark = pytest.mark.slow
ENV = {
    "MONITOR_INTERVAL_S": "1",
    "WINDOW_SCALE": str(60 / 3600),
    "BUCKET_S": "5",
    "MIN_JOBS": "40",
    "SAMPLE_SIZE": "100",
    "PERMUTATIONS": "200",
    "RETRAIN_MIN_LABELS": "120",
    "RETRAIN_EPOCHS": "2",
    "RETRAIN_HOLDBACK": "0.3",
    "RETRAIN_COOLDOWN_S": "600",
    # Shorter than a retrain: Redis hands the training message out again once it ends (see
    # digitflow.monitor_store.claim_retrain); the retrain must still run once.
    "VISIBILITY_TIMEOUT_S": "5",
    # The retrained version serves half of the live jobs; 40 of them decide its promotion.
    "CANARY_SHARE": "0.5",
    "MIN_CANARY_JOBS": "40",
}
JOBS = 260
# Rotated 40 degrees, strokes 7 px thick: version 1 gets ~85% of the inliers right, so the
# held-back slice (~40 rows) gives the retrained candidate a clear margin to beat.
ANGLE, THICK = -40, 7


@pytest.fixture(scope="module")
def database() -> Iterator[str | None]:
    url = create_postgres_database()
    yield url
    if url is not None:
        drop_postgres_database(url)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, database: str | None) -> Iterator[Stack]:
    url = redis_server.url(9)
    connect(url).flushdb()
    env = {**ENV, **({"DATABASE_URL": database} if database else {})}
    s = start_stack(url, tmp_path_factory.mktemp("monitor-service"), env=env, monitoring=True)
    wait_for_registry(s, ("digits",), 1)
    yield s
    s.close()
    connect(url).flushdb()


def shifted_traffic(stack: Stack, n: int, offset: int = 0, feedback: bool = False) -> list[tuple[dict[str, Any], int]]:
    """``n`` training-split digits in a different hand (rotated, thick strokes), sent by 6
    clients (each job labelled as soon as it finished, with ``feedback``); returns (finished
    job, true label) pairs in order."""
    images, labels, held = load_mnist_5k()
    train = np.setdiff1d(np.arange(len(labels)), held)
    train = train[np.random.default_rng(3).permutation(len(train))][offset : offset + n]  # stored by class
    local = threading.local()

    def one(i: int) -> tuple[dict[str, Any], int]:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        data = photo(images[i], ANGLE, THICK)
        job = submit_with(local.s, stack, data, "digits")
        if feedback:
            url = f"{stack.base_url}/v1/jobs/{job['job_id']}/feedback"
            local.s.post(url, json={"label": int(labels[i])}, timeout=10).raise_for_status()
        return job, int(labels[i])

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, train))


def monitoring(stack: Stack) -> dict[str, Any]:
    return stack.session.get(f"{stack.base_url}/v1/monitoring/digits", timeout=10).json()  # type: ignore[no-any-return]


def warmed_up(stack: Stack) -> int | None:
    """How many references the monitor's warm-up fetched (None until it logs it)."""
    done = [e for e in stack.log_events("monitor") if e.get("event") == "monitor_warmed_up"]
    return int(done[-1]["references"]) if done else None


def gauge(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_drift_is_detected_exported_and_retrained_away(stack: Stack, database: str | None) -> None:
    # The registry bootstraps beside the monitor: its warm-up waits for the view and fetches the
    # production reference before traffic, so the first report does not open MLflow's store.
    wait_until(lambda: warmed_up(stack) is not None, 60, 0.5, what="the monitor's warm-up")
    assert (warmed_up(stack) or 0) >= 1  # digits (and any other model the registry lists)
    sent = shifted_traffic(stack, JOBS)
    assert all(job["status"] == "succeeded" for job, _ in sent), [j for j, _ in sent if j["status"] != "succeeded"][:2]
    assert {job["model"]["version"] for job, _ in sent} == {"1"}
    before = float(np.mean([job["result"]["label"] == truth for job, truth in sent]))
    # In order: the most recent labels (the held-back slice) are the last jobs'.
    codes = [
        stack.session.post(f"{stack.base_url}/v1/jobs/{job['job_id']}/feedback", json={"label": truth}, timeout=10)
        for job, truth in sent
    ]
    assert {c.status_code for c in codes} == {200}

    # Beat -> monitor.run: the production version raises drift alerts on the shifted hand (in
    # a report computed after all the feedback was in).
    labelled_at = time.time()

    def fresh_alerts() -> set[str]:
        body = monitoring(stack)
        v1 = next((v for v in body["versions"] if v["version"] == "1"), None)
        if v1 is None or (body["generated_at"] or 0) <= labelled_at:
            return set()
        return {a["kind"] for a in v1["alerts"] if a["window"] == "1h"}

    wait_until(lambda: {"input_drift", "accuracy_drop"} <= fresh_alerts(), 60, 0.5, what="drift alerts on version 1")
    report = monitoring(stack)
    v1 = next(v for v in report["versions"] if v["version"] == "1")
    hour = v1["windows"]["1h"]
    assert hour["jobs"] >= JOBS and hour["labelled"] >= 100 and hour["accuracy"] < 0.97
    assert hour["input_drift"]["embedding_mmd"]["p_value"] < 0.01

    # The same report as Prometheus gauges on the monitor worker's metrics port.
    metrics = requests.get(f"http://127.0.0.1:{stack.config.monitor_metrics_port}/metrics", timeout=10).text
    labels = {"model": "digits", "version": "1", "window": "1h"}
    assert gauge(metrics, "digitflow_drift_alert", kind="input_drift", **labels) == 1.0
    assert gauge(metrics, "digitflow_drift_alert", kind="prediction_drift", **labels) in (0.0, 1.0)
    jobs = gauge(metrics, "digitflow_monitored_jobs", **labels)
    assert jobs is not None and jobs >= JOBS
    observed = gauge(metrics, "digitflow_model_accuracy", kind="observed", **labels)
    assert observed is not None and observed < 0.97
    mmd_p = gauge(metrics, "digitflow_drift_p_value", test="embedding_mmd", **labels)
    assert mmd_p is not None and mmd_p < 0.01

    # The alert and the labels start a retrain on the training worker, which releases version 2
    # as the candidate (after the fixed evaluation suites), not as production.
    wait_until(lambda: monitoring(stack)["retraining"], 240, 1.0, what="a retraining outcome")
    (outcome,) = monitoring(stack)["retraining"]
    assert outcome["trigger"] in ("drift", "accuracy") and outcome["new_version"] == "2", outcome
    assert outcome["candidate"] is True and outcome["promoted"] is False, (outcome["reason"], outcome.get("suites"))
    assert outcome["suites"]["passed"] and set(outcome["suites"]["suites"]) == {
        "mnist_heldout",
        "mnist_heldout_augmented",
        *GATE_POPULATIONS,
    }
    canary = stack.session.get(f"{stack.base_url}/v1/models/digits/canary", timeout=10).json()
    assert canary["production"] == "1" and canary["canary"]["version"] == "2", canary
    assert canary["canary"]["mode"] == "canary" and canary["canary"]["share"] == 0.5
    assert outcome["new"]["recent"] > outcome["production"]["recent"]
    assert outcome["new"]["heldout"] >= outcome["production"]["heldout"] - 0.01
    assert outcome["feedback_rows"] + outcome["recent_rows"] >= 120 and outcome["recent_rows"] >= 36
    run = store_of(stack).client.get_model_version("digits", "2").run_id
    params = store_of(stack).client.get_run(run).data.params
    assert params["feedback_rows"] == str(outcome["feedback_rows"]) and params["base_version"] == "1"
    assert len(params["feedback_ids_sha256"]) == 64

    # Live canary traffic (labelled): half of it is version 2's; not worse than production on
    # any live signal and past the suites, it is promoted by the monitor's canary decision.
    live = shifted_traffic(stack, 120, offset=JOBS, feedback=True)
    assert {job["model"]["version"] for job, _ in live} == {"1", "2"}

    def release_state() -> str:
        body = stack.session.get(f"{stack.base_url}/v1/models/digits/canary", timeout=10).json()
        return json.dumps({k: body[k] for k in ("production", "canary", "releases")}, default=str)[:3000]

    try:
        wait_until(
            lambda: stack.session.get(f"{stack.base_url}/v1/models/digits", timeout=10).json()["production"] == "2",
            120,
            1.0,
            what="version 2 promoted by the canary decision",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {release_state()}") from None
    release = stack.session.get(f"{stack.base_url}/v1/models/digits", timeout=10).json()["releases"][-1]
    assert release["version"] == "2" and release["outcome"] == "promoted" and release["by"] == "monitor", release
    numbers = release["numbers"]
    cand, prod = numbers["candidate"], numbers["production"]
    assert cand["jobs"] >= 40 and cand["labelled"] >= 20 and prod["labelled"] >= 20, numbers
    assert cand["accuracy"] > prod["accuracy"] and cand["estimated_accuracy"] >= prod["estimated_accuracy"] - 0.02

    # The fleet serves version 2 without a restart, better on fresh digits of the shifted hand.
    wait_until(
        lambda: shifted_traffic(stack, 1, offset=JOBS + 120)[0][0]["model"]["version"] == "2",
        30,
        0.5,
        what="version 2 served",
    )
    after = shifted_traffic(stack, 120, offset=JOBS + 121)
    assert {job["model"]["version"] for job, _ in after} == {"2"}
    assert float(np.mean([job["result"]["label"] == truth for job, truth in after])) > before

    # The redelivered training message (the retrain outlived VISIBILITY_TIMEOUT_S) ran nothing.
    time.sleep(max(0.0, outcome["at"] + outcome["seconds"] + 12 - time.time()))
    assert len(monitoring(stack)["retraining"]) == 1, monitoring(stack)["retraining"]

    # The terminal table reads the same report.
    cli = subprocess.run(
        [sys.executable, "-m", "digitflow_cli.main", "monitor", "report", "digits", "--url", stack.base_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert cli.returncode == 0, cli.stderr
    assert re.search(r"^1\s+1d\s+\d+.*input_drift", cli.stdout, re.M), cli.stdout
    assert "-> version 2, promoted=False, candidate=True" in cli.stdout
    # Every job is in the configured prediction log (PostgreSQL here when one is reachable).
    log = PredictionLog(database or f"sqlite:///{stack.config.var_dir / 'predictions.db'}")
    try:
        assert log.engine.dialect.name == ("postgresql" if database else "sqlite")
        assert all(log.get(job["job_id"]) is not None for job, _ in [*sent, *after])
    finally:
        log.close()
