"""Store identity's pure parts: the prediction log's id and retrain watermark (SQLite in a
temporary folder), the deployment id in ``var/``, the lines ``digitflow run`` prints, and the
model cache dropping a copy made from another MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from digitflow.model_files import METADATA_FILE
from digitflow.predlog import PredictionLog, predictions
from digitflow_cli import deployment
from inference_worker.artifacts import drop_stale_copy
from tests.model_dirs import copy_of


def labelled_rows(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"job_id": f"job{start + i}", "model": "digits", "version": "1", "label": 3, "classes": 10}
        | {"confidence": 0.9, "true_label": 3, "pixels": bytes(784)}
        for i in range(n)
    ]


def test_a_log_keeps_its_id_and_a_new_log_gets_another(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'predictions.db'}"
    first = PredictionLog(url)
    same = PredictionLog(url)  # another process on the same file
    assert first.state.store_id() == same.state.store_id() and len(first.state.store_id()) == 32
    old_id = same.state.store_id()
    first.close()
    same.close()
    shutil.rmtree(tmp_path / "a")  # var/ deleted
    again = PredictionLog(url)
    assert again.state.store_id() != old_id
    again.close()


def test_the_retrain_watermark_lives_in_the_log_and_a_new_log_has_none(tmp_path: Path) -> None:
    old = PredictionLog(f"sqlite:///{tmp_path / 'old.db'}")
    old.append(labelled_rows(5))
    assert old.state.retrain_mark("digits") is None and old.state.max_row_id(predictions) == 5
    old.state.set_retrain_mark("digits", 5, at=100.0)
    old.state.set_retrain_mark("digits", 5, at=200.0)  # the cooldown restarted: one row, updated
    assert old.state.retrain_mark("digits") == (5, 200.0)
    assert old.count_labelled("digits", 5) == 0  # the rows a retrain used are not counted again

    new = PredictionLog(f"sqlite:///{tmp_path / 'new.db'}")
    new.append(labelled_rows(3))
    assert new.state.retrain_mark("digits") is None and new.state.max_row_id(predictions) == 3
    assert new.count_labelled("digits", 0) == 3
    old.close()
    new.close()


def test_a_deployment_id_is_made_once_per_var_folder(tmp_path: Path) -> None:
    first = deployment.deployment_id(tmp_path / "var")
    assert deployment.deployment_id(tmp_path / "var") == first
    assert (tmp_path / "var" / "deployment-id").read_text().strip() == first
    assert deployment.deployment_id(tmp_path / "other" / "var") != first


def test_the_lines_name_the_other_deployment_and_the_way_out(tmp_path: Path) -> None:
    me = deployment.record("me", tmp_path / "a")
    other = {"id": "them", "dir": "/home/x/digitflow/var", "pid": 42, "host": "box"}
    busy = deployment.busy_line("redis://127.0.0.1:6379/0", other, 40123)
    assert "them" in busy and "/home/x/digitflow/var" in busy and "pid 42" in busy
    assert "private redis-server on port 40123" in busy and "REDIS_URL" in busy
    assert deployment.taken_over_line("redis://r", me, None) is None
    assert deployment.taken_over_line("redis://r", me, {**me, "pid": 1}) is None  # ours, last time
    line = deployment.taken_over_line("redis://r", me, other)
    assert line is not None and "them" in line and "not running" in line


def test_a_cached_copy_with_other_weights_is_dropped(tmp_path: Path) -> None:
    cached = copy_of("digits", tmp_path / "cache" / "digits" / "2")
    sha = json.loads((cached / METADATA_FILE).read_text())["weights_sha256"]
    drop_stale_copy(cached, sha)  # the view names these weights: kept
    drop_stale_copy(cached, None)  # the view names none (an old view): kept
    assert (cached / METADATA_FILE).is_file()
    drop_stale_copy(cached, "0" * 64)  # version 2 of a reset store is another model
    assert not cached.exists() and list((tmp_path / "cache" / "digits").iterdir()) == []
