"""The monitor's report reads the prediction log as columns (monitor_worker/frame.py): NULLs
become NaN, subsets keep the log's order, and the report's counts match the rows they come from
(a real SQLite log in a temporary folder; no Redis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitflow.predlog import PredictionLog
from digitflow.reference import load_reference
from digitflow.settings import MonitorSettings, shipped_models_dir
from monitor_worker.frame import Frame
from monitor_worker.report import model_report

NOW = 1_800_000_000.0


def _row(i: int, version: str, at: float, label: int, truth: int | None, outlier: bool) -> dict[str, object]:
    return {
        "job_id": f"job-{i:04d}",
        "at": at,
        "model": "digits",
        "version": version,
        "label": label,
        "classes": 10,
        "confidence": 0.9,
        "calibrated": None if i % 2 else 0.8,
        "outlier_score": 0.1,
        "outlier": outlier,
        "ink_ratio": None if i == 0 else 0.2,
        "mean_intensity": 0.1,
        "aspect": 0.7,
        "embedding": np.full(128, i % 3, np.float16).tobytes(),
        "true_label": truth,
    }


@pytest.fixture
def log(tmp_path: Path) -> PredictionLog:
    log = PredictionLog(f"sqlite:///{tmp_path / 'predictions.db'}")
    rows = [_row(i, "1", NOW - 80 + i, i % 10, (i % 10) if i % 4 == 0 else None, i % 5 == 0) for i in range(40)]
    rows += [_row(100 + i, "2", NOW - 30 + i, 3, 4 if i < 2 else None, False) for i in range(6)]
    log.append(rows)
    return log


def test_columns_keep_the_log_order_and_its_nulls(log: PredictionLog) -> None:
    frame = Frame.of(log.window("digits", 0.0))
    assert len(frame) == 46 and list(frame.id) == sorted(frame.id, reverse=True)  # newest first
    assert int(np.isnan(frame.ink_ratio).sum()) == 1 and int(np.isnan(frame.calibrated).sum()) == 23
    v2 = frame.take(frame.version == "2")
    assert len(v2) == 6 and set(v2.label) == {3} and v2.accuracy() == (2, 0.0)
    v1 = frame.take(frame.version == "1")
    assert v1.accuracy() == (10, 1.0) and int(v1.outlier.sum()) == 8
    empty = Frame.of([])
    assert len(empty) == 0 and empty.accuracy() == (0, None)


def test_report_counts_come_from_the_rows(log: PredictionLog) -> None:
    ref = load_reference(shipped_models_dir() / "digits" / "1")
    s = MonitorSettings(window_scale=60 / 3600, bucket_s=20.0, min_jobs=5, sample_size=20, permutations=20)
    report = model_report("digits", log, lambda version: ref, "1", s, now=NOW)
    v1, v2 = report["versions"]
    assert (v1["version"], v2["version"]) == ("1", "2") and v1["production"] and not v2["production"]
    hour = v1["windows"]["1h"]  # 1 h at this scale is the last 60 s
    in_hour = [i for i in range(40) if NOW - 80 + i >= NOW - 60]
    assert len(in_hour) == 20
    assert hour["jobs"] == len(in_hour) and hour["labelled"] == sum(i % 4 == 0 for i in in_hour)
    assert hour["outlier_rate"] == pytest.approx(np.mean([i % 5 == 0 for i in in_hour]))
    assert hour["class_mix"] == [round(sum(i % 10 == c for i in in_hour) / len(in_hour), 4) for c in range(10)]
    assert v1["windows"]["7d"]["jobs"] == 40 and v2["windows"]["7d"]["labelled"] == 2
    assert v2["windows"]["7d"]["accuracy"] == 0.0 and v1["windows"]["7d"]["accuracy"] == 1.0
    # 20 s buckets: every row in exactly one, oldest first.
    assert sum(p["jobs"] for p in v1["series"]) == 40 and sum(p["jobs"] for p in v2["series"]) == 6
    assert [p["t"] for p in v1["series"]] == sorted(p["t"] for p in v1["series"])
    assert v1["windows"]["7d"]["input_drift"]["embedding_mmd"]["p_value"] > 0
