"""Canary releases, the pure parts: which jobs a candidate serves, which versions may be pinned,
the canary decision, the suite gate, and the shadow row of the prediction log."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from digitflow.errors import VersionNotServableError
from digitflow.model_spec import canary_of, resolve, routes_to_candidate, servable_versions
from digitflow.predlog import SHADOW_SUFFIX
from monitor_worker.canary import HOLD, PROMOTE, RETIRE, WAIT, decide, live_stats, worse_signals
from postprocess_worker.steps import shadow_row
from training_worker.suites import suite_gate


def entry(**extra: Any) -> dict[str, Any]:
    versions = {v: {"version": v, "source": f"/m/{v}"} for v in ("1", "2", "3", "4")}
    return {"name": "digits", "aliases": {"production": "1"}, "versions": versions, **extra}


def test_a_canary_serves_its_share_of_jobs_by_job_id() -> None:
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    for share in (0.1, 0.3):
        served = sum(routes_to_candidate(job_id, share) for job_id in ids)
        assert abs(served / len(ids) - share) < 0.015, (share, served)
    # The same job id always lands on the same version (a redelivered job does not switch).
    assert [routes_to_candidate(i, 0.3) for i in ids[:200]] == [routes_to_candidate(i, 0.3) for i in ids[:200]]
    assert not any(routes_to_candidate(i, 0.0) for i in ids[:500])
    assert all(routes_to_candidate(i, 1.0) for i in ids[:500])


def test_only_production_the_candidate_and_marked_versions_may_be_pinned() -> None:
    plain = entry()
    assert resolve(plain, None)[0] == "1" and resolve(plain, "1")[0] == "1"
    with pytest.raises(VersionNotServableError) as refused:
        resolve(plain, "3")
    assert refused.value.code == "version_not_servable" and refused.value.status == 403
    released = entry(
        aliases={"production": "1", "candidate": "2"},
        canary={"version": "2", "mode": "canary", "share": 0.1},
        servable=["4"],
    )
    assert servable_versions(released) == ["1", "2", "4"]
    assert resolve(released, "2")[0] == "2" and resolve(released, "4")[0] == "4"
    with pytest.raises(VersionNotServableError):
        resolve(released, "3")


def test_a_candidate_counts_only_while_the_alias_names_it() -> None:
    record = {"version": "2", "mode": "shadow", "share": 0.0}
    assert canary_of(entry(aliases={"production": "1", "candidate": "2"}, canary=record)) == record
    assert canary_of(entry(aliases={"production": "1", "candidate": "3"}, canary=record)) is None
    assert canary_of(entry(canary=record)) is None  # alias removed (retired)
    assert canary_of(entry(aliases={"production": "1", "candidate": "2"})) is None  # moved in MLflow only


def rows(n: int, correct: int, calibrated: float = 0.95, outliers: int = 0, labelled: int | None = None) -> list[Any]:
    labelled = n if labelled is None else labelled
    return [
        SimpleNamespace(
            label=1 if i < correct else 2,
            true_label=1 if i < labelled else None,
            calibrated=calibrated,
            outlier=i < outliers,
        )
        for i in range(n)
    ]


def test_the_decision_waits_promotes_holds_and_retires_with_the_reason() -> None:
    prod = live_stats(rows(400, 380), served=400)
    passed = {"passed": True, "suites": {"mnist_heldout": {}}, "reason": "within"}
    assert decide(live_stats(rows(50, 50), served=50), prod, passed, 100, 0.02)[0] == WAIT
    good = live_stats(rows(120, 115), served=120)
    decision, why = decide(good, prod, passed, 100, 0.02)
    assert decision == PROMOTE and "mnist_heldout" in why
    assert decide(good, prod, None, 100, 0.02)[0] == HOLD  # started by hand: an admin decides
    assert decide(good, prod, {"passed": False, "reason": "loses 0.05"}, 100, 0.02) == (
        RETIRE,
        "failed the evaluation suites: loses 0.05",
    )
    bad = live_stats(rows(120, 10), served=120)
    decision, why = decide(bad, prod, passed, 100, 0.02)
    assert decision == RETIRE and "accuracy 0.083 vs 0.950" in why


def test_each_live_signal_can_retire_a_candidate() -> None:
    prod = live_stats(rows(200, 190, calibrated=0.95), served=200)
    assert worse_signals(live_stats(rows(200, 190, calibrated=0.80), served=200), prod, 0.02) == [
        "estimated accuracy 0.800 vs 0.950"
    ]
    assert worse_signals(live_stats(rows(200, 190, outliers=40), served=200), prod, 0.02) == [
        "outlier rate 0.200 vs 0.000"
    ]
    assert worse_signals(live_stats(rows(200, 190), served=180, failed=20), prod, 0.02) == [
        "failure rate 0.100 vs 0.000"
    ]
    # A difference that a few dozen jobs explain is not "worse" (seen live: 8 outliers in 42
    # candidate jobs against 3 in 22, while the candidate was far more accurate).
    noisy = live_stats(rows(42, 41, outliers=8), served=42)
    assert worse_signals(noisy, live_stats(rows(22, 16, outliers=3), served=22), 0.02) == []
    # Feedback accuracy counts only with enough labels on both sides.
    few = live_stats(rows(200, 0, labelled=10), served=200)
    assert worse_signals(few, prod, 0.02) == []


def test_the_suite_gate_refuses_a_loss_beyond_the_margin_on_any_suite() -> None:
    prod = {"mnist_heldout": 0.99, "mnist_heldout_augmented": 0.95}
    ok = suite_gate({"mnist_heldout": 0.985, "mnist_heldout_augmented": 0.96}, prod, 0.01)
    assert ok["passed"] and ok["suites"]["mnist_heldout"] == {"candidate": 0.985, "production": 0.99}
    lost = suite_gate({"mnist_heldout": 0.995, "mnist_heldout_augmented": 0.93}, prod, 0.01)
    assert not lost["passed"] and "mnist_heldout_augmented 0.9300 vs 0.9500" in lost["reason"]


def test_a_shadow_answer_is_logged_as_its_own_row_for_the_candidate() -> None:
    item: Any = {
        "job_id": "a" * 32,
        "model": "digits",
        "version": "1",
        "logits": [5.0, 0.0, 0.0],
        "pixels": bytes(784),
        "embedding": b"prod",
        "shadow": {
            "version": "2",
            "logits": [0.0, 0.0, 4.0],
            "embedding": b"cand",
            "outlier_score": 9.0,
            "outlier_threshold": 5.0,
            "temperature": 1.0,
        },
    }
    row = shadow_row(item)
    assert row["job_id"] == "a" * 32 + SHADOW_SUFFIX and row["version"] == "2"
    assert row["label"] == 2 and row["embedding"] == b"cand" and row["outlier"] is True
    assert row["pixels"] == bytes(784) and row["calibrated"] == pytest.approx(float(np.exp(4) / (np.exp(4) + 2)))
