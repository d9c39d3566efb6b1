from __future__ import annotations

import math

import numpy as np
import pytest

from postprocess_worker.steps import postprocess_items, softmax, summarize


def test_softmax_is_a_distribution_and_stable_for_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 1001.0, 999.0]]))
    assert probs.shape == (1, 3)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9)
    assert probs.argmax() == 1


def test_summary_of_a_confident_prediction() -> None:
    logits = [0.0] * 10
    logits[7] = 12.0
    result = summarize(logits)
    assert result["label"] == 7
    assert result["confidence"] > 0.99
    assert len(result["probabilities"]) == 10
    assert math.isclose(sum(result["probabilities"]), 1.0, abs_tol=1e-5)
    assert result["outlier"] is False
    assert result["outlier_score"] == pytest.approx(1 - result["confidence"], abs=1e-6)


def test_flat_logits_are_flagged_as_outlier() -> None:
    result = summarize([0.1] * 10)
    assert result["confidence"] == pytest.approx(0.1, abs=1e-6)
    assert result["outlier"] is True


def test_items_keep_their_order() -> None:
    a, b = [0.0] * 10, [0.0] * 10
    a[3], b[8] = 9.0, 9.0
    out = postprocess_items(
        [{"job_id": "x", "model": "digits", "logits": a}, {"job_id": "y", "model": "digits", "logits": b}]
    )
    assert [r["label"] for r in out] == [3, 8]
