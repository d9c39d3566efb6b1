"""A model version's outlier detector and reference distribution: ``reference.safetensors``.

Written next to ``weights.safetensors`` when a version is trained (or by ``digitflow models
calibrate`` for a shipped one) and read without torch (safetensors' numpy loader, no pickle):

- the detector, named by ``meta["detector"]``: ``max-softmax`` (``score = 1 - max_c softmax(logits)_c``;
  for versions trained with outlier exposure, which learn a flat softmax on non-digits) or
  ``mahalanobis-tied-covariance`` (the default, for versions trained without it: class-conditional
  means of the 128-d penultimate features and the precision matrix of their shared covariance,
  ``score = min_c (x - mu_c)^T P (x - mu_c)``); either way flagged above ``threshold``, calibrated
  on held-out and realistic inputs (``training_worker.calibrate``);
- the reference distribution the monitor compares traffic with: predicted-class frequencies,
  a sample of max-probabilities, the input statistics (ink ratio, mean intensity, aspect) and a
  sample of penultimate embeddings (float16), all on held-out inputs;
- ``temperature``: temperature scaling fitted on held-out logits, for the estimated accuracy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitflow.model_files import METADATA_FILE, REFERENCE_FILE, record_reference_digest, reference_problem

INPUT_STATS = ("ink_ratio", "mean_intensity", "aspect")
ARRAYS = ("class_means", "precision", "class_freq", "maxprob", "embeddings", *INPUT_STATS)
MAHALANOBIS = "mahalanobis-tied-covariance"
MAX_SOFTMAX = "max-softmax"
DETECTORS = (MAHALANOBIS, MAX_SOFTMAX)


@dataclass
class Reference:
    """The detector and the reference statistics of one model version."""

    class_means: np.ndarray  # (K, D) float32
    precision: np.ndarray  # (D, D) float32
    threshold: float
    temperature: float
    class_freq: np.ndarray  # (K,) float64, sums to 1
    maxprob: np.ndarray  # (n,) float32
    embeddings: np.ndarray  # (m, D) float16
    ink_ratio: np.ndarray
    mean_intensity: np.ndarray
    aspect: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def detector(self) -> str:
        return str(self.meta.get("detector", MAHALANOBIS))

    def scores(self, features: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
        """Outlier scores (N,) of (N, D) penultimate features and (N, K) logits, by this version's
        detector; ``logits`` are required for ``max-softmax`` (ValueError without them)."""
        if self.detector == MAX_SOFTMAX:
            if logits is None:
                raise ValueError("the max-softmax detector needs the logits")
            z = np.asarray(logits, dtype=np.float64)
            if len(z) == 0:
                return np.zeros(0, dtype=np.float32)
            z = z - z.max(axis=1, keepdims=True)
            return (1.0 - 1.0 / np.exp(z).sum(axis=1)).astype(np.float32)
        return self.mahalanobis(features)

    def mahalanobis(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis scores (N,) of (N, D) features: the distance to the nearest class mean."""
        feats = np.asarray(features, dtype=np.float32)
        if len(feats) == 0:
            return np.zeros(0, dtype=np.float32)
        # (x-mu)^T P (x-mu) = x^T P x - 2 x^T P mu + mu^T P mu, for all classes at once.
        xp = feats @ self.precision
        xx = np.einsum("nd,nd->n", xp, feats)
        mp = self.class_means @ self.precision
        mm = np.einsum("kd,kd->k", mp, self.class_means)
        dist = xx[:, None] - 2.0 * feats @ mp.T + mm[None, :]
        return np.maximum(dist.min(axis=1), 0.0).astype(np.float32)


def ink_stats(pixels: np.ndarray | bytes) -> tuple[float, float, float]:
    """(ink_ratio, mean_intensity, aspect) of a 28x28 input (784 values, ink bright): the share
    of pixels above 64, the mean intensity in 0..1, and the ink bounding box's width / height
    (0 without ink). Preprocess logs them per job; the monitor compares them with the reference."""
    raw = np.frombuffer(pixels, dtype=np.uint8) if isinstance(pixels, bytes) else np.asarray(pixels)
    arr = raw.astype(np.float32).reshape(28, 28)
    ink = arr > 64
    aspect = 0.0
    if ink.any():
        ys, xs = np.nonzero(ink)
        aspect = float((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1))
    return float(ink.mean()), float(arr.mean() / 255.0), aspect


def fit_detector(
    features: np.ndarray, labels: np.ndarray, num_classes: int, ridge: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision of the shared (tied) covariance, with a small ridge so that
    dead ReLU units (zero variance) do not make it singular."""
    feats = np.asarray(features, dtype=np.float64)
    means = np.zeros((num_classes, feats.shape[1]))
    centred = np.empty_like(feats)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            means[c] = feats[mask].mean(axis=0)
            centred[mask] = feats[mask] - means[c]
    cov = centred.T @ centred / max(len(feats) - num_classes, 1)
    cov += ridge * max(float(np.trace(cov)) / len(cov), 1e-6) * np.eye(len(cov))
    return means.astype(np.float32), np.linalg.inv(cov).astype(np.float32)


def save_reference(model_dir: Path, ref: Reference) -> Path:
    """Write ``reference.safetensors`` atomically into ``model_dir`` and its sha256 into the
    folder's ``model.json`` (``reference_sha256``, checked on every load); returns its path."""
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(getattr(ref, name)) for name in ARRAYS}
    meta = {**ref.meta, "threshold": float(ref.threshold), "temperature": float(ref.temperature)}
    path = Path(model_dir) / REFERENCE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"digitflow": json.dumps(meta)})
    tmp.chmod(0o644)
    os.replace(tmp, path)
    record_reference_digest(Path(model_dir))
    return path


def load_reference(model_dir: Path) -> Reference | None:
    """The reference of the version in ``model_dir``; None when it has none (an older version).

    Raises ValueError for a file that exists but is not a valid reference, and when model.json
    names a ``reference_sha256`` the file does not match (or the file is missing).
    """
    path = Path(model_dir) / REFERENCE_FILE
    meta_path = Path(model_dir) / METADATA_FILE
    if meta_path.is_file():
        try:
            problem = reference_problem(Path(model_dir), json.loads(meta_path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{meta_path}: cannot read metadata: {exc}") from exc
        if problem is not None:
            raise ValueError(f"{model_dir}: {problem}")
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {}).get("digitflow", "{}"))
            arrays = {name: fh.get_tensor(name) for name in ARRAYS}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a valid reference file: {exc}") from exc
    threshold, temperature = meta.pop("threshold", None), meta.pop("temperature", 1.0)
    if not isinstance(threshold, float | int):
        raise ValueError(f"{path}: no threshold")
    if meta.get("detector", MAHALANOBIS) not in DETECTORS:
        raise ValueError(f"{path}: unknown detector {meta.get('detector')!r} (known: {', '.join(DETECTORS)})")
    return Reference(**arrays, threshold=float(threshold), temperature=float(temperature), meta=meta)
