"""The monitor's report of one model: per version, windows (1h/1d/7d), a time series, accuracy by
age and alerts, computed from the prediction log against each version's reference.

The shape is the ``GET /v1/monitoring/<model>`` contract (docs/monitoring.md).
Windows with no traffic have ``jobs: 0`` and null statistics; drift alerts need MIN_JOBS jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from digitflow.predlog import PredictionLog
from digitflow.reference import INPUT_STATS, Reference
from digitflow.settings import MonitorSettings
from monitor_worker import drift_stats as ds
from monitor_worker.frame import Frame

WINDOWS = {"1h": 3600.0, "1d": 86400.0, "7d": 7 * 86400.0}
KS_MIN_ROWS = 200  # rows before an input-statistic KS test may alert (see window_stats)
AGES = [
    ("day 1", 0.0, 86400.0),
    ("week 1", 86400.0, 7 * 86400.0),
    ("month 1", 7 * 86400.0, 30 * 86400.0),
    ("quarter 1", 30 * 86400.0, 90 * 86400.0),
]
MIN_LABELLED = 20


def thresholds(s: MonitorSettings) -> dict[str, float]:
    return {"p_value": s.p_value, "psi": s.psi, "accuracy_drop": s.accuracy_drop, "outlier_rate": s.outlier_rate}


def _embeddings(log: PredictionLog, ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    pick = [int(ids[i]) for i in rng.choice(len(ids), min(n, len(ids)), replace=False)]
    blobs = log.embeddings(pick)
    return np.array([np.frombuffer(b, dtype=np.float16) for b in blobs], dtype=np.float32)


def window_stats(
    rows: Frame, ref: Reference | None, s: MonitorSettings, log: PredictionLog, classes: int, seed: int = 0
) -> dict[str, Any]:
    """The contract's window object for ``rows`` (one version's rows in the window)."""
    n = len(rows)
    out: dict[str, Any] = {
        "jobs": n,
        "labelled": 0,
        "accuracy": None,
        "estimated_accuracy": None,
        "outlier_rate": None,
        "prediction_drift": None,
        "confidence_drift": None,
        "input_drift": None,
        "class_mix": None,
    }
    if n == 0:
        return out
    out["labelled"], out["accuracy"] = rows.accuracy()
    out["estimated_accuracy"] = ds.estimated_accuracy(rows.calibrated)
    out["outlier_rate"] = float(np.mean(rows.outlier))
    counts = ds.class_counts(rows.label, classes)
    out["class_mix"] = [round(float(c) / n, 4) for c in counts]
    if ref is None:
        return out
    enough = n >= s.min_jobs
    chi = ds.chi_square(counts, ref.class_freq)
    psi = ds.psi(counts, ref.class_freq)
    out["prediction_drift"] = {
        "chi2": chi.statistic,
        "p_value": chi.p_value,
        "psi": psi,
        "alert": enough and chi.p_value < s.p_value and psi > s.psi,
    }
    conf = ds.ks(rows.confidence, ref.maxprob)
    out["confidence_drift"] = {
        "ks": conf.statistic,
        "p_value": conf.p_value,
        "alert": enough and conf.p_value < s.p_value and conf.statistic > s.ks_effect,
    }
    inputs: dict[str, Any] = {}
    alert = False
    # The three input-statistic KS tests share one P_VALUE (Bonferroni) and need an effect of
    # KS_EFFECT; the embedding MMD, the primary test, alerts at P_VALUE.
    # They alert from KS_MIN_ROWS rows on: the reference's statistics come from the held-out
    # arrays, which differ a little from the same digits uploaded and preprocessed, and on 60
    # undrifted jobs that difference plus sampling noise reached a KS distance of 0.28 (the
    # drift demo's normal traffic); from 200 jobs on it stays under 0.21.
    level = s.p_value / len(INPUT_STATS)
    for name in INPUT_STATS:
        values = getattr(rows, name)
        values = values[~np.isnan(values)]
        if len(values):
            test = ds.ks(values, getattr(ref, name))
            inputs[name] = {"ks": test.statistic, "p_value": test.p_value}
            alert |= len(values) >= KS_MIN_ROWS and test.p_value < level and test.statistic > s.ks_effect
    emb = _embeddings(log, rows.id, s.sample_size, np.random.default_rng(seed))
    if len(emb) >= 2:
        mmd = ds.mmd_permutation(emb, ref.embeddings, s.permutations, seed=seed, max_n=s.sample_size)
        inputs["embedding_mmd"] = {"mmd": mmd.statistic, "p_value": mmd.p_value}
        alert |= mmd.p_value < s.p_value
    inputs["alert"] = enough and alert
    out["input_drift"] = inputs
    return out


def window_alerts(
    window: str, stats: dict[str, Any], ref: Reference | None, s: MonitorSettings
) -> list[dict[str, Any]]:
    """The alerts a window raises (kind, window, statistic, p_value, threshold)."""
    alerts = []
    pd, cd, inp = stats["prediction_drift"], stats["confidence_drift"], stats["input_drift"]
    if pd and pd["alert"]:
        alerts.append(
            {"kind": "prediction_drift", "statistic": pd["psi"], "p_value": pd["p_value"], "threshold": s.psi}
        )
    if cd and cd["alert"]:
        alerts.append(
            {"kind": "confidence_drift", "statistic": cd["ks"], "p_value": cd["p_value"], "threshold": s.p_value}
        )
    if inp and inp["alert"]:
        mmd = inp.get("embedding_mmd") or {}
        alerts.append(
            {"kind": "input_drift", "statistic": mmd.get("mmd"), "p_value": mmd.get("p_value"), "threshold": s.p_value}
        )
    base = float(ref.meta.get("heldout_accuracy") or 0.0) if ref is not None else 0.0
    labelled = stats["accuracy"] is not None and base > 0 and stats["labelled"] >= MIN_LABELLED
    if labelled and stats["accuracy"] < base - s.accuracy_drop:
        alerts.append(
            {
                "kind": "accuracy_drop",
                "statistic": stats["accuracy"],
                "p_value": None,
                "threshold": base - s.accuracy_drop,
            }
        )
    rate = stats["outlier_rate"]
    if rate is not None and stats["jobs"] >= s.min_jobs and rate > s.outlier_rate:
        alerts.append({"kind": "outlier_rate", "statistic": rate, "p_value": None, "threshold": s.outlier_rate})
    return [{**a, "window": window} for a in alerts]


def series(rows: Frame, ref: Reference | None, s: MonitorSettings, now: float, classes: int) -> list[dict[str, Any]]:
    """Fixed-width time buckets (BUCKET_S, the last MAX_BUCKETS), oldest first; empty ones skipped."""
    width = s.bucket_s
    start = (now // width - s.max_buckets + 1) * width
    bucket = np.where(rows.at >= start, (rows.at - start) // width, -1).astype(np.int64)
    out = []
    for b in np.unique(bucket[bucket >= 0]):
        group = rows.take(bucket == b)
        n = len(group)
        labelled, acc = group.accuracy()
        counts = ds.class_counts(group.label, classes)
        point: dict[str, Any] = {
            "t": start + int(b) * width,
            "jobs": n,
            "labelled": labelled,
            "accuracy": acc,
            "estimated_accuracy": ds.estimated_accuracy(group.calibrated),
            "outlier_rate": float(np.mean(group.outlier)),
            "psi": None,
            "confidence_ks": None,
            "mmd": None,
            "class_mix": [round(float(c) / n, 4) for c in counts],
            "alerts": [],
        }
        if ref is not None:
            point["psi"] = ds.psi(counts, ref.class_freq)
            conf = ds.ks(group.confidence, ref.maxprob)
            point["confidence_ks"] = conf.statistic
            if n >= s.min_jobs:
                if point["psi"] > s.psi:
                    point["alerts"].append("prediction_drift")
                if conf.p_value < s.p_value and conf.statistic > s.ks_effect:
                    point["alerts"].append("confidence_drift")
        out.append(point)
    return out


def accuracy_by_age(
    log: PredictionLog, model: str, version: str, deployed_at: float | None, scale: float
) -> list[dict[str, Any]]:
    """Accuracy from feedback by the version's age when the job ran (day 1, week 1, ...),
    counted in SQL over every row the log keeps, however old."""
    out = []
    for name, lo, hi in AGES:
        labelled, correct = (
            (0, 0)
            if deployed_at is None
            else log.accuracy_between(model, version, deployed_at + lo * scale, deployed_at + hi * scale)
        )
        out.append({"age": name, "labelled": labelled, "accuracy": correct / labelled if labelled else None})
    return out


def model_report(
    model: str,
    log: PredictionLog,
    references: Callable[[str], Reference | None],
    production: str | None,
    s: MonitorSettings,
    now: float | None = None,
) -> dict[str, Any]:
    """The report of ``model``: every version seen in the 7-day window (and production)."""
    now = time.time() if now is None else now
    longest = max(WINDOWS.values()) * s.window_scale
    rows = Frame.of(log.window(model, now - longest))
    versions = sorted(set(rows.version) | ({production} if production else set()), key=lambda v: (len(v), v))
    out = []
    for version in versions:
        ref = references(version)
        mine = rows.take(rows.version == version)
        classes = len(ref.class_freq) if ref is not None else 10
        deployed_at = log.first_seen(model, version)
        windows = {}
        alerts: list[dict[str, Any]] = []
        for i, (name, seconds) in enumerate(WINDOWS.items()):
            in_window = mine.take(mine.at >= now - seconds * s.window_scale)
            windows[name] = window_stats(in_window, ref, s, log, classes, seed=i)
            alerts += window_alerts(name, windows[name], ref, s)
        out.append(
            {
                "version": version,
                "production": version == production,
                "deployed_at": deployed_at,
                "reference": None
                if ref is None
                else {
                    "heldout_accuracy": ref.meta.get("heldout_accuracy"),
                    "n": ref.meta.get("n"),
                    "outlier_threshold": ref.threshold,
                    "temperature": ref.temperature,
                },
                "windows": windows,
                "series": series(mine, ref, s, now, classes),
                "accuracy_by_age": accuracy_by_age(log, model, version, deployed_at, s.window_scale),
                "alerts": alerts,
            }
        )
    return {"model": model, "generated_at": now, "thresholds": thresholds(s), "versions": out}
