"""Pure postprocessing: softmax, top label, confidence and a first outlier signal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from digitflow.messages import Item

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


def postprocess_items(
    items: Sequence[Item], outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD
) -> list[dict[str, Any]]:
    """Summaries of a batch; with the model's class labels (sent by inference) each names its class."""
    out = []
    for item in items:
        result = summarize(item["logits"], outlier_threshold)
        labels = item.get("labels")
        if isinstance(labels, list) and len(labels) == len(item["logits"]):
            result["class"] = str(labels[result["label"]])
        out.append(result)
    return out
