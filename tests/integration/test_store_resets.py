"""A store reset while Redis is kept, with real processes: the prediction log (``var/`` deleted
between two runs of the monitor service) and the MLflow registry (its folder deleted between
two runs of the registry service). The state Redis kept that pointed into the old store is
reset with one ``store_state_reset`` line, and what depends on it works on the new store."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from digitflow.celery_app import make_celery
from digitflow.keys import RELEASE_PREFIX, monitor
from digitflow.model_spec import PRODUCTION
from digitflow.model_store import RegistryStore
from digitflow.model_view import read_entry
from digitflow.predlog import PredictionLog
from digitflow.settings import MonitorSettings
from digitflow.store_identity import MLFLOW, PREDICTIONS, bound_id
from digitflow_cli.supervisor import StackConfig, Supervisor, build_specs
from monitor_worker.tasks import maybe_retrain
from tests.conftest import wait_until
from tests.integration.models_support import submit
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.model_dirs import copy_of
from tests.stacks import start_stack

pytestmark = pytest.mark.slow
DRIFTING = {"model": "digits", "canary": None, "versions": [{"production": True, "alerts": [{"kind": "input_drift"}]}]}


def events(log_file: Path, name: str) -> list[dict[str, Any]]:
    if not log_file.is_file():
        return []
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [e for e in map(json.loads, lines) if e.get("event") == name]


def one_service(redis_url: str, var_dir: Path, name: str, **config: Any) -> Supervisor:
    """Only ``name`` of the stack ``make run`` starts, as its own process."""
    cfg = StackConfig(var_dir=var_dir, redis_url=redis_url, flower=False, **config)
    specs = [s for s in build_specs(cfg) if s.name == name]
    supervisor = Supervisor(specs, var_dir / "log", restart=False)
    supervisor.start_all()
    return supervisor


def labelled(n: int) -> list[dict[str, Any]]:
    return [
        {"job_id": f"j{i}", "model": "digits", "version": "1", "label": 1, "classes": 10, "confidence": 0.9}
        | {"true_label": i % 10, "pixels": bytes(784)}
        for i in range(n)
    ]


def test_a_new_prediction_log_resets_the_monitor_state_and_retraining_still_triggers(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Run 1 with a pre-store-id Redis watermark (what the issue found: last_id 941, no TTL). The
    # log holds 941 labelled rows, so the watermark can be this log's: moved into it.
    log1 = PredictionLog(f"sqlite:///{tmp_path / 'run1' / 'predictions.db'}")
    log1.append(labelled(941))
    redis_client.hset(monitor("retrain-state", "digits"), mapping={"last_id": 941, "at": 1000.0})
    run1 = one_service(redis_url, tmp_path / "run1", "monitor", monitoring=True)
    try:
        wait_until(lambda: events(tmp_path / "run1/log/monitor.log", "store_bound"), 60, 0.2, what="run 1 binds")
    finally:
        run1.close()
    (bound,) = events(tmp_path / "run1/log/monitor.log", "store_bound")
    assert bound["store_id"] == log1.state.store_id() == bound_id(redis_client, PREDICTIONS)
    assert bound["retrain_watermarks_moved_into_log"] == [{"model": "digits", "last_id": 941}]
    assert log1.state.retrain_mark("digits") == (941, 1000.0)
    assert not redis_client.exists(monitor("retrain-state", "digits"))
    # Run 1's monitoring state, and the old watermark again (an older training worker wrote it).
    redis_client.hset(monitor("since", "digits"), "1|input_drift|1h", 1000.0)
    redis_client.set(monitor("report", "digits"), json.dumps({"model": "digits", "versions": []}))
    redis_client.set(monitor("pruned", "digits"), "1000.0")
    redis_client.hset(monitor("retrain-state", "digits"), mapping={"last_id": 941, "at": time.time()})

    # Run 2: var/ deleted (a fresh prediction log), the same Redis.
    shutil.rmtree(tmp_path / "run1")
    run2 = one_service(redis_url, tmp_path / "run2", "monitor", monitoring=True)
    log_file = tmp_path / "run2/log/monitor.log"
    try:
        wait_until(lambda: events(log_file, "store_state_reset"), 60, 0.2, what="run 2 resets run 1's state")
    finally:
        run2.close()
    (reset,) = events(log_file, "store_state_reset")
    log2 = PredictionLog(f"sqlite:///{tmp_path / 'run2' / 'predictions.db'}")
    assert reset["store"] == "predictions" and reset["previous_store_id"] == bound["store_id"]
    assert reset["store_id"] == log2.state.store_id() == bound_id(redis_client, PREDICTIONS)
    assert set(reset["reset"]) == {monitor(k, "digits") for k in ("since", "report", "pruned", "retrain-state")}
    assert reset["retrain_watermarks_dropped"] == [{"model": "digits", "last_id": 941, "log_last_id": 0}]
    assert "not the one" in reset["reason"] and not events(log_file, "store_bound")
    assert not any(redis_client.exists(k) for k in reset["reset"])

    # The same labelled jobs again. Counted from the old watermark they would be none: the
    # decision that switched retraining off. Counted on this log's own (none), they trigger it.
    log2.append(labelled(600))
    assert log2.count_labelled("digits", 941) == 0
    s = MonitorSettings(redis_url=redis_url, var_dir=tmp_path / "run2", retrain_min_labels=200)
    app = make_celery("test", s)
    assert maybe_retrain(app, redis_client, log2, s, DRIFTING) is True
    assert redis_client.llen("training") == 1  # training.retrain sent
    log2.state.set_retrain_mark("digits", 600)  # what the retrain records when done
    assert log2.count_labelled("digits", 600) == 0  # the next alert waits for new labels
    for log in (log1, log2):
        log.close()


def test_a_reset_mlflow_store_resets_the_registry_view_and_jobs_keep_succeeding(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    env = {"REGISTRY_SYNC_S": "1", "DEPLOY_RECHECK_S": "1"}
    run1 = one_service(redis_url, var, "registry", env=env)
    try:
        wait_until(lambda: read_entry(redis_client, "digits"), 120, 0.3, what="run 1's registry view")
        store = RegistryStore(f"sqlite:///{var / 'mlflow' / 'mlflow.db'}", var / "mlflow" / "artifacts")
        old_id = store.store_id()
        version = store.register_dir("digits", copy_of("digits", tmp_path / "v2"))
        store.set_alias("digits", PRODUCTION, version)  # moved in MLflow: the registry deploys it
        wait_until(
            lambda: (read_entry(redis_client, "digits") or {}).get("aliases", {}).get(PRODUCTION) == "2", 30, 0.3
        )
    finally:
        run1.close()
    redis_client.hset(RELEASE_PREFIX + "digits", "2:served", 40)
    redis_client.hset(monitor("since", "digits"), "2|accuracy_drop|1h", 1000.0)
    assert set(read_entry(redis_client, "digits")["versions"]) == {"1", "2"}  # type: ignore[index]

    shutil.rmtree(var / "mlflow")  # the registry's store reset; Redis and the rest of var/ kept
    stack = start_stack(redis_url, var, env=env)
    try:
        log_file = var / "log" / "registry.log"
        wait_until(lambda: events(log_file, "store_state_reset"), 120, 0.3, what="the registry's reset")
        (reset,) = events(log_file, "store_state_reset")
        # Read with sqlite3: this process's MLflow client caches its engine on the deleted file.
        with contextlib.closing(sqlite3.connect(var / "mlflow" / "mlflow.db")) as db:
            experiment = db.execute("SELECT experiment_id, creation_time FROM experiments WHERE name='digitflow'")
            new_id = "-".join(map(str, experiment.fetchone()))
            in_mlflow = {str(v) for (v,) in db.execute("SELECT version FROM model_versions WHERE name='digits'")}
        assert reset["store"] == "mlflow" and reset["previous_store_id"] == old_id != reset["store_id"]
        assert reset["store_id"] == new_id == bound_id(redis_client, MLFLOW)
        assert set(reset["reset"]) == {RELEASE_PREFIX + "digits", monitor("since", "digits")}
        assert reset["registry_view"] == "rewritten from this store"
        # The view is rewritten right after the line, in the same step of the registry.
        wait_until(lambda: set((read_entry(redis_client, "digits") or {})["versions"]) == in_mlflow, 10, 0.1)
        entry = read_entry(redis_client, "digits") or {}
        assert in_mlflow == {"1"} and entry["aliases"][PRODUCTION] == "1"
        assert "deploy" not in entry  # run 1's deploy of its version 2 is not carried over
        assert not [e for e in events(log_file, "alias_moved_elsewhere") if e["ts"] >= reset["ts"]]  # run 1's only
        time.sleep(2.5)  # two periodic checks of the inference process
        jobs = [submit(stack, paper_photo(d, seed=i), "digits") for i, (d, _) in enumerate(heldout_digits(6, seed=2))]
        assert [(j["status"], j["model"]["version"]) for j in jobs] == [("succeeded", "1")] * 6, jobs
    finally:
        stack.close()
