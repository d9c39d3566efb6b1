"""The shipped outlier detector, the postprocess verdict and policy, and the retrain gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitflow.errors import ConfigurationError
from digitflow.reference import MAHALANOBIS, MAX_SOFTMAX, fit_detector, load_reference, save_reference
from digitflow.settings import CoreSettings, MonitorSettings, shipped_models_dir
from postprocess_worker.steps import apply_detector, log_row, summarize
from training_worker.retrain import gate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["digits", "fashion"])
def test_shipped_versions_have_a_reference(name: str) -> None:
    ref = load_reference(shipped_models_dir() / name / "1")
    assert ref is not None and ref.threshold > 0 and 0.1 < ref.temperature < 10
    assert ref.class_means.shape == (10, 128) and ref.precision.shape == (128, 128)
    assert ref.embeddings.shape == (500, 128) and ref.embeddings.dtype == np.float16
    assert ref.class_freq.sum() == pytest.approx(1.0) and len(ref.maxprob) == 500


def test_mahalanobis_detector_flags_points_far_from_every_class() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    feats = rng.normal(0, 1, (600, 8)) + labels[:, None] * 5.0
    means, precision = fit_detector(feats, labels, 3)
    ref = load_reference(shipped_models_dir() / "digits" / "1")
    assert ref is not None
    ref.class_means, ref.precision = means, precision
    near = ref.mahalanobis(np.array([[0.0] * 8, [5.0] * 8]))
    far = ref.mahalanobis(np.array([[40.0] * 8]))
    assert near.max() < 30 and far[0] > 1000
    ref.meta["detector"] = MAHALANOBIS
    assert np.array_equal(ref.scores(np.array([[40.0] * 8])), far)


def test_max_softmax_detector_scores_flat_softmax_high_and_needs_logits() -> None:
    ref = load_reference(shipped_models_dir() / "digits" / "1")
    assert ref is not None
    ref.meta["detector"] = MAX_SOFTMAX
    logits = np.array([[12.0] + [0.0] * 9, [0.1] * 10, [3.0, 2.9] + [0.0] * 8])
    scores = ref.scores(np.zeros((3, 128)), logits)
    assert scores[0] < 0.001 and abs(scores[1] - 0.9) < 1e-6 and 0.5 < scores[2] < 0.6
    with pytest.raises(ValueError, match="needs the logits"):
        ref.scores(np.zeros((3, 128)))


def test_a_reference_naming_an_unknown_detector_is_refused(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(shipped_models_dir() / "digits" / "1", tmp_path / "v")
    ref = load_reference(tmp_path / "v")
    assert ref is not None
    ref.meta["detector"] = "crystal-ball"
    save_reference(tmp_path / "v", ref)
    with pytest.raises(ValueError, match="unknown detector 'crystal-ball'"):
        load_reference(tmp_path / "v")


def test_detector_replaces_low_confidence_signal_and_reject_policy_drops_the_label() -> None:
    item = {
        "job_id": "a" * 32,
        "model": "digits",
        "logits": [5.0] + [0.0] * 9,
        "outlier_score": 300.0,
        "outlier_threshold": 229.0,
        "temperature": 0.5,
        "ink": [0.2, 0.1, 0.7],
        "pixels": bytes(784),
    }
    flagged = apply_detector(summarize(item["logits"]), item, "flag")  # type: ignore[arg-type]
    assert flagged["outlier"] is True and flagged["label"] == 0 and flagged["outlier_score"] == 300.0
    rejected = apply_detector({**summarize(item["logits"]), "class": "0"}, item, "reject")  # type: ignore[arg-type]
    assert rejected["label"] is None and rejected["class"] is None
    inlier = apply_detector(summarize(item["logits"]), {**item, "outlier_score": 10.0}, "reject")  # type: ignore[arg-type]
    assert inlier["outlier"] is False and inlier["label"] == 0
    row = log_row(item, flagged, 0)  # type: ignore[arg-type]
    assert row["calibrated"] > flagged["confidence"] and row["ink_ratio"] == 0.2 and row["outlier"] is True


def test_retrain_gate_refuses_a_worse_model() -> None:
    prod = {"heldout": 0.99, "recent": 0.88}
    ok, reason = gate({"heldout": 0.985, "recent": 0.97}, prod, margin=0.01)
    assert ok and "better" in reason
    worse_recent, reason = gate({"heldout": 0.99, "recent": 0.85}, prod, margin=0.01)
    assert not worse_recent and "not better" in reason
    tie, _ = gate({"heldout": 0.99, "recent": 0.88}, prod, margin=0.01)
    assert not tie
    forgets, reason = gate({"heldout": 0.97, "recent": 0.99}, prod, margin=0.01)
    assert not forgets and "loses more than 0.01" in reason


def test_monitoring_settings_are_validated() -> None:
    s = MonitorSettings.from_env({"WINDOW_SCALE": "0.01", "OUTLIER_POLICY": "reject", "RETRAIN_MIN_LABELS": "7"})
    assert s.window_scale == 0.01 and s.outlier_policy == "reject" and s.retrain_min_labels == 7
    assert s.prediction_db_url.startswith("sqlite:///") and s.prediction_db_url.endswith("predictions.db")
    assert CoreSettings(database_url="postgresql+psycopg://u:p@db/x").prediction_db_url.startswith("postgresql")
    for bad in ({"OUTLIER_POLICY": "drop"}, {"P_VALUE": "1.5"}, {"PERMUTATIONS": "5"}, {"BUCKET_S": "0"}):
        with pytest.raises(ConfigurationError):
            MonitorSettings.from_env(bad)
