"""Measure one model version on the populations of bench/population_suites.py, through the real
upload path (preprocess_worker.steps.preprocess, the version's forward pass and its detector, the
way postprocess applies it: outlier = score > threshold).

An upload that preprocessing refuses counts as wrong for a digit population and as caught for a
non-digit one; refused uploads score +inf for the AUROC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from digitflow.errors import DigitflowError
from digitflow.reference import Reference
from digitnet.loading import LoadedModel
from preprocess_worker.steps import preprocess

MAX_PIXELS = 12_000_000  # the gateway's default max_image_pixels
BATCH = 256


@dataclass
class Measured:
    """What one population gave: inputs, predictions and outlier scores (refused: +inf)."""

    labels: np.ndarray
    pixels: np.ndarray  # (N, 28, 28) uint8; zeros where refused
    ok: np.ndarray  # bool: preprocessing accepted it
    pred: np.ndarray
    scores: np.ndarray
    preprocess_ms: float
    summary: dict[str, object] = field(default_factory=dict)


def auroc(inlier: np.ndarray, outlier: np.ndarray) -> float:
    """P(an outlier scores above an inlier), ties counted half (Mann-Whitney)."""
    ranks = rankdata(np.concatenate([inlier, outlier]))
    r_out = ranks[len(inlier) :].sum()
    return float((r_out - len(outlier) * (len(outlier) + 1) / 2) / (len(inlier) * len(outlier)))


def preprocess_all(uploads: list[bytes]) -> tuple[np.ndarray, np.ndarray, float]:
    """(pixels (N, 28, 28), accepted (N,), ms per upload in-process)."""
    pixels = np.zeros((len(uploads), 28, 28), np.uint8)
    ok = np.zeros(len(uploads), bool)
    start = time.perf_counter()
    for i, data in enumerate(uploads):
        try:
            pixels[i] = np.frombuffer(preprocess(data, MAX_PIXELS), np.uint8).reshape(28, 28)
            ok[i] = True
        except DigitflowError:
            pass
    return pixels, ok, 1000 * (time.perf_counter() - start) / max(1, len(uploads))


def infer(model: LoadedModel, ref: Reference, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, outlier score) of uint8 (N, 28, 28) inputs."""
    preds, scores = [], []
    for start in range(0, len(pixels), BATCH):
        batch = [p.tobytes() for p in pixels[start : start + BATCH]]
        logits, feats = model.predict_with_features(batch)
        preds.append(logits.argmax(axis=1))
        scores.append(ref.scores(feats, logits).astype(np.float64))
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(preds), np.concatenate(scores)


def measure(model: LoadedModel, ref: Reference, uploads: list[bytes], labels: list[int]) -> Measured:
    pixels, ok, ms = preprocess_all(uploads)
    pred, scores = infer(model, ref, pixels)
    scores[~ok] = np.inf
    return Measured(np.asarray(labels), pixels, ok, pred, scores, ms)


def digit_summary(m: Measured, threshold: float) -> dict[str, object]:
    correct = (m.pred == m.labels) & m.ok
    conf = np.zeros((10, 10), int)
    np.add.at(conf, (m.labels[m.ok], m.pred[m.ok]), 1)
    per_class = {c: float(conf[c, c] / max(1, (m.labels == c).sum())) for c in range(10)}
    off = sorted((int(conf[i, j]), f"{i}->{j}") for i in range(10) for j in range(10) if i != j and conf[i, j])
    return {
        "n": len(m.labels),
        "accuracy": float(correct.mean()),
        "refused": int((~m.ok).sum()),
        "flagged": float((m.scores[m.ok] > threshold).mean()) if m.ok.any() else 0.0,
        "worst_classes": [f"{c} {per_class[c]:.0%}" for c in sorted(per_class, key=per_class.__getitem__)[:3]],
        "top_confusions": [f"{name} x{n}" for n, name in reversed(off[-4:])],
        "confusion": conf.tolist(),
        "preprocess_ms": round(m.preprocess_ms, 2),
    }


def non_digit_summary(m: Measured, threshold: float, digit_scores: np.ndarray) -> dict[str, object]:
    return {
        "n": len(m.labels),
        "refused": int((~m.ok).sum()),
        "caught": float(((~m.ok) | (m.scores > threshold)).mean()),
        "auroc": auroc(digit_scores, m.scores),
        "preprocess_ms": round(m.preprocess_ms, 2),
    }


def inference_ms_per_job(model: LoadedModel, pixels: np.ndarray, repeats: int = 5) -> float:
    """Batched CPU forward pass (features and logits, BATCH inputs), best of ``repeats``, per input."""
    batch = [p.tobytes() for p in pixels[:BATCH]]
    model.predict_with_features(batch)  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_with_features(batch)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(batch)
