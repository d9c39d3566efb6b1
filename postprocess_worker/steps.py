"""Pure postprocessing: softmax, top label, confidence and a first outlier signal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from digitflow.messages import Item
from digitflow.predlog import SHADOW_SUFFIX

# A first, simple outlier signal: a digit model that is unsure of every class is probably
# looking at something that is not a digit. The score is 1 - max probability.
DEFAULT_OUTLIER_THRESHOLD = 0.5


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def summarize(logits: Sequence[float], outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD) -> dict[str, Any]:
    """The public result of one job from its logits."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    label = int(probs.argmax())
    confidence = float(probs[label])
    score = 1.0 - confidence
    return {
        "label": label,
        "confidence": round(confidence, 6),
        "probabilities": [round(float(p), 6) for p in probs],
        "outlier": bool(score > outlier_threshold),
        "outlier_score": round(score, 6),
    }


def apply_detector(result: dict[str, Any], item: Item, policy: str = "flag") -> dict[str, Any]:
    """Replace the low-confidence signal by the version's detector (when inference sent its score):
    ``outlier`` is score > threshold; with ``policy="reject"`` an outlier's label (and class) is None."""
    score, threshold = item.get("outlier_score"), item.get("outlier_threshold")
    if isinstance(score, float | int) and isinstance(threshold, float | int):
        result["outlier_score"] = round(float(score), 4)
        result["outlier_threshold"] = round(float(threshold), 4)
        result["outlier"] = bool(score > threshold)
    if policy == "reject" and result["outlier"]:
        result["label"] = None
        if "class" in result:
            result["class"] = None
    return result


def postprocess_items(
    items: Sequence[Item], outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD, policy: str = "flag"
) -> list[dict[str, Any]]:
    """Summaries of a batch; with the model's class labels (sent by inference) each names its class."""
    out = []
    for item in items:
        result = summarize(item["logits"], outlier_threshold)
        labels = item.get("labels")
        if isinstance(labels, list) and len(labels) == len(item["logits"]):
            result["class"] = str(labels[result["label"]])
        out.append(apply_detector(result, item, policy))
    return out


def log_row(item: Item, result: dict[str, Any], predicted: int) -> dict[str, Any]:
    """The prediction-log row of one finished job (see digitflow.predlog)."""
    logits = np.asarray(item["logits"], dtype=np.float64)
    temperature = item.get("temperature")
    calibrated = None
    if isinstance(temperature, float | int) and temperature > 0:
        calibrated = float(softmax(logits / float(temperature)).max())
    ink: list[float | None] = [*item.get("ink", [None, None, None])]
    return {
        "job_id": item["job_id"],
        "model": item["model"],
        "version": str(item.get("version", "")),
        "label": predicted,
        "classes": len(logits),
        "confidence": result["confidence"],
        "calibrated": calibrated,
        "outlier_score": item.get("outlier_score"),
        "outlier": bool(result["outlier"]),
        "ink_ratio": ink[0],
        "mean_intensity": ink[1],
        "aspect": ink[2],
        "pixels": item.get("pixels"),
        "embedding": item.get("embedding"),
    }


def shadow_row(item: Item, policy: str = "flag") -> dict[str, Any]:
    """The prediction-log row of a shadow candidate's answer to the same job (job id +
    SHADOW_SUFFIX, the candidate's version); the answer itself is never returned."""
    shadow: Item = {**item, **item["shadow"]}  # type: ignore[typeddict-item]
    result = apply_detector(summarize(shadow["logits"]), shadow, policy)
    row = log_row(shadow, result, int(np.argmax(shadow["logits"])))
    row["job_id"] = item["job_id"] + SHADOW_SUFFIX
    return row
