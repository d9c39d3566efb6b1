"""The canary decision: is the candidate in release worse than production on live traffic?

Over the jobs logged since the candidate started (its own rows: canary jobs or shadow rows;
production's rows of the same period), four live signals are compared: accuracy from feedback
(only once both sides have MIN_LABELLED labelled jobs), estimated accuracy (mean calibrated
confidence), outlier rate and failure rate (``df:release:<model>``, counted by inference).
With fewer than MIN_CANARY_JOBS candidate jobs the answer is ``wait``. A signal worse by more
than CANARY_MARGIN plus two standard errors of the difference retires the candidate;
otherwise it is promoted if it passed the fixed evaluation suites (results recorded by the
trainer), and ``hold`` (an admin decides) if it has no suite results, e.g. a candidate an
admin started by hand. Pure but for the reads in :func:`canary_numbers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import redis

from digitflow.keys import RELEASE_PREFIX
from digitflow.model_spec import production_of
from digitflow.predlog import PredictionLog
from digitflow.settings import MonitorSettings
from monitor_worker import drift_stats as ds

MIN_LABELLED = 20
WAIT, PROMOTE, RETIRE, HOLD = "wait", "promote", "retire", "hold"


def live_stats(rows: Sequence[Any], served: int = 0, failed: int = 0) -> dict[str, Any]:
    """The live signals of one version's rows, plus its served / failed counters."""
    labelled = [r for r in rows if r.true_label is not None]
    calibrated = np.array([r.calibrated for r in rows if r.calibrated is not None], dtype=np.float64)
    return {
        "jobs": len(rows),
        "labelled": len(labelled),
        "accuracy": float(np.mean([r.label == r.true_label for r in labelled])) if labelled else None,
        "estimated_accuracy": ds.estimated_accuracy(calibrated) if len(calibrated) else None,
        "outlier_rate": float(np.mean([bool(r.outlier) for r in rows])) if rows else None,
        "failed": failed,
        "failure_rate": failed / (served + failed) if served + failed else None,
    }


def _worse(bad: float, good: float, n_bad: int, n_good: int, margin: float) -> bool:
    """``bad`` exceeds ``good`` by more than ``margin`` plus two standard errors of the
    difference of two proportions: a few dozen jobs' noise never retires a candidate."""
    se = math.sqrt(bad * (1 - bad) / max(n_bad, 1) + good * (1 - good) / max(n_good, 1))
    return bad - good > margin + 2 * se


def worse_signals(cand: dict[str, Any], prod: dict[str, Any], margin: float) -> list[str]:
    """The signals on which the candidate is worse than production by more than ``margin``
    (and than chance explains: see _worse)."""
    out = []

    def both(key: str) -> bool:
        return cand[key] is not None and prod[key] is not None

    def check(key: str, label: str, higher_is_worse: bool, n_key: str = "jobs") -> None:
        c, p = cand[key] or 0.0, prod[key] or 0.0
        bad, good = (c, p) if higher_is_worse else (1 - c, 1 - p)
        if _worse(bad, good, cand[n_key], prod[n_key], margin):
            out.append(f"{label} {c:.3f} vs {p:.3f}")

    if both("accuracy") and min(cand["labelled"], prod["labelled"]) >= MIN_LABELLED:
        check("accuracy", "accuracy", False, "labelled")
    if both("estimated_accuracy"):
        check("estimated_accuracy", "estimated accuracy", False)
    if both("outlier_rate"):
        check("outlier_rate", "outlier rate", True)
    check("failure_rate", "failure rate", True)
    return out


def decide(
    cand: dict[str, Any], prod: dict[str, Any], suites: dict[str, Any] | None, min_jobs: int, margin: float
) -> tuple[str, str]:
    """(wait | promote | retire | hold, why)."""
    if cand["jobs"] < min_jobs:
        return WAIT, f"{cand['jobs']} of {min_jobs} jobs"
    worse = worse_signals(cand, prod, margin)
    if worse:
        return RETIRE, f"worse than production (margin {margin:g}) on {'; '.join(worse)}"
    if suites is None:
        return HOLD, "not worse on live signals, but no evaluation-suite results: promote or abort by hand"
    if not suites.get("passed"):
        return RETIRE, f"failed the evaluation suites: {suites.get('reason', 'see suites')}"
    return PROMOTE, (
        f"not worse than production on {cand['jobs']} jobs (margin {margin:g}) and passed the evaluation suites "
        f"({', '.join(sorted(suites.get('suites', {})))})"
    )


def canary_numbers(
    entry: dict[str, Any], canary: dict[str, Any], log: PredictionLog, client: redis.Redis, s: MonitorSettings
) -> dict[str, Any]:
    """The release's state for the report: its record, both sides' numbers and the decision."""
    name, version = str(entry["name"]), str(canary["version"])
    production = production_of(entry)
    rows = log.window(name, float(canary.get("since") or 0.0))
    raw = cast(dict[bytes, bytes], client.hgetall(RELEASE_PREFIX + name))
    counters = {k.decode(): int(v) for k, v in raw.items()}

    def side(v: str | None) -> dict[str, Any]:
        mine = [r for r in rows if str(r.version) == v]
        return live_stats(mine, counters.get(f"{v}:served", 0), counters.get(f"{v}:failed", 0))

    cand, prod = side(version), side(production)
    decision, reason = decide(cand, prod, canary.get("suites"), s.min_canary_jobs, s.canary_margin)
    return {
        **canary,
        "production": production,
        "min_jobs": s.min_canary_jobs,
        "margin": s.canary_margin,
        "numbers": {"candidate": cand, "production": prod},
        "decision": decision,
        "reason": reason,
    }
