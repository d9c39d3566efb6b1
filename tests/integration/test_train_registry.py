"""train -> register -> promote-if-better, against a real MLflow registry (SQLite) and Redis.

A model of random weights (0 epochs) becomes production when there is none; one trained for an
epoch (through the real ``digitflow train`` command) beats it and is promoted; another random
one is registered but not promoted. Each run carries its parameters, metrics, data set hash and
a confusion matrix picture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from PIL import Image

from digitflow.model_store import RegistryStore
from digitflow.model_view import read_entry
from registry_worker.deploy import Deployer
from training_worker.register import train_and_register
from training_worker.settings import TrainingSettings
from training_worker.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_train_register_and_promote_only_when_better(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = TrainingSettings(redis_url=redis_url, var_dir=tmp_path)
    store = RegistryStore(settings.tracking_uri, settings.artifact_root)
    deployer = Deployer(store, redis_client, timeout_s=5)

    def promote(name: str, version: str) -> dict[str, Any]:
        return deployer.promote(name, version)

    random = train_and_register("digits", settings, TrainConfig(epochs=0, threads=1), True, promote, progress=False)
    assert random["version"] == "1" and random["promoted"] and random["reason"] == "no production version yet"
    assert random["heldout_accuracy"] < 0.3

    env = {**os.environ, "REDIS_URL": redis_url, "VAR_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": settings.tracking_uri}
    argv = [sys.executable, "-m", "digitflow_cli.main", "train", "digits", "--epochs", "1", "--promote-if-better"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1/1 [" in done.stderr and "100%" in done.stderr  # the progress bar
    trained = json.loads(done.stdout)
    assert trained["version"] == "2" and trained["promoted"] and trained["production"] == "1"
    assert trained["heldout_accuracy"] > 0.8 and trained["production_accuracy"] == random["heldout_accuracy"]

    worse = train_and_register(
        "digits", settings, TrainConfig(epochs=0, seed=1, threads=1), True, promote, False, deployer.sync_one
    )
    assert worse["version"] == "3" and not worse["promoted"] and "not better" in worse["reason"]
    assert store.alias("digits") == "2" and store.history("digits") == ["1", "2"]
    entry = read_entry(redis_client, "digits")
    assert entry is not None and entry["aliases"]["production"] == "2" and sorted(entry["versions"]) == ["1", "2", "3"]

    # What the run and the version carry.
    record = entry["versions"]["2"]
    assert record["input_profile"] == "digits-mnist" and record["labels"] == [str(d) for d in range(10)]
    assert record["metrics"]["heldout_accuracy"] == trained["heldout_accuracy"]
    assert (
        record["dataset"] == "mnist_5k.npz+font_digits.npz+upload_digits.npz"
        and len(record["dataset_sha256"]) == 64
        and record["code_version"]
    )
    run = store.client.get_run(trained["run_id"])
    assert run.data.params["epochs"] == "1" and run.data.metrics["heldout_accuracy"] == trained["heldout_accuracy"]
    artifacts = {a.path for a in store.client.list_artifacts(trained["run_id"])}
    assert {"confusion.png", "model"} <= artifacts
    png = Path(store.client.download_artifacts(trained["run_id"], "confusion.png", str(tmp_path)))
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size[0] > 400
    files = {a.path for a in store.client.list_artifacts(trained["run_id"], "model")}
    # no pickle anywhere; reference.safetensors: the outlier detector and drift reference
    assert files == {"model/model.json", "model/weights.safetensors", "model/reference.safetensors"}
