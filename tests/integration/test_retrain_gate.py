"""Retraining end to end against a real MLflow registry (SQLite) and prediction log: a candidate
that is worse is registered with its lineage but never promoted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import training_worker.retrain as retrain_mod
from digitflow.model_store import RegistryStore
from digitflow.monitor_store import release_retrain_lock, retrain_history, take_retrain_lock
from digitflow.predlog import PredictionLog
from digitflow.redis_client import connect
from digitflow.settings import shipped_models_dir
from digitnet.net import DigitNet
from training_worker.datasets import load_mnist_5k
from training_worker.settings import TrainingSettings


def test_a_worse_candidate_is_registered_with_lineage_but_not_promoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = TrainingSettings(var_dir=tmp_path, retrain_min_labels=50, retrain_epochs=1)
    store = RegistryStore(s.tracking_uri, s.artifact_root)
    store.bootstrap(shipped_models_dir())
    images, labels, held = load_mnist_5k()
    # Shuffled: the file is sorted by label, and 24 zeros in a row would let a constant guess
    # of an untrained network score 100% on the recent slice (one RNG state in ten).
    train = np.random.default_rng(0).permutation(np.setdiff1d(np.arange(len(labels)), held))[:80]
    log = PredictionLog(s.prediction_db_url)
    log.append(
        [
            {
                "job_id": f"{i:032x}",
                "model": "digits",
                "version": "1",
                "label": int(labels[j]),
                "classes": 10,
                "confidence": 0.99,
                "pixels": images[j].tobytes(),
            }
            for i, j in enumerate(train)
        ]
    )
    for i, j in enumerate(train):
        log.set_feedback(f"{i:032x}", int(labels[j]))

    def untrained_fit(ds: Any, cfg: Any, extra: Any = None, on_batch: Any = None, init: Any = None) -> Any:
        assert extra is not None and len(extra[1]) >= 56  # the feedback rows travel into training
        return DigitNet(10).eval(), {"heldout_accuracy": 0.1}, np.zeros((10, 10), np.int64)

    def promote(name: str, version: str) -> dict[str, Any]:
        raise AssertionError("a worse model must not be promoted")

    monkeypatch.setattr(retrain_mod, "fit", untrained_fit)
    outcome = retrain_mod.retrain("digits", s, "manual", promote)
    assert outcome["promoted"] is False and "not better" in outcome["reason"]
    assert outcome["new_version"] == "2" and outcome["feedback_rows"] == 56 and outcome["recent_rows"] == 24
    assert outcome["production"]["recent"] > 0.9 > outcome["new"]["recent"]
    assert store.alias("digits") == "1"
    tags = store.client.get_model_version("digits", "2")
    run = store.client.get_run(tags.run_id)
    assert run.data.params["feedback_rows"] == "56" and run.data.params["trigger"] == "manual"
    with pytest.raises(ValueError, match="needs 500"):
        retrain_mod.retrain("digits", s, "manual", promote, min_labels=500)


def test_a_redelivered_retrain_request_runs_once(tmp_path: Path, redis_url: str) -> None:
    """Redis hands an unacknowledged message out again after VISIBILITY_TIMEOUT_S; a retrain
    longer than that comes back. The request's token makes the copy a no-op, and the lock is
    released only by the request that holds it."""
    client = connect(redis_url)
    s = TrainingSettings(redis_url=redis_url, var_dir=tmp_path, retrain_min_labels=50)

    def never(*_: str) -> dict[str, Any]:
        raise AssertionError("nothing is trained, registered or promoted here")

    assert take_retrain_lock(client, "digits", "token-a")
    first = retrain_mod.run_retrain("digits", "drift", s, never, never, token="token-a")
    assert first is not None and first["promoted"] is False and "retraining needs 50" in first["reason"]
    assert retrain_mod.run_retrain("digits", "drift", s, never, never, token="token-a") is None  # the redelivered copy
    assert [o["trigger"] for o in retrain_history(client, "digits")] == ["drift"]
    assert take_retrain_lock(client, "digits", "token-b")  # released by token-a's run
    assert retrain_mod.run_retrain("digits", "manual", s, never, never) is not None  # manual: no token
    release_retrain_lock(client, "digits", "token-a")  # not token-a's lock any more
    assert not take_retrain_lock(client, "digits", "token-c")
    assert len(retrain_history(client, "digits")) == 2
