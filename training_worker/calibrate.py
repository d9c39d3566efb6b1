"""Fit a version's outlier detector and reference distribution (``digitflow.reference``).

Called at the end of training (``lifecycle``, ``retrain``) and by ``digitflow models calibrate
NAME VERSION`` for the shipped versions. Features and logits come from one forward pass. A
Mahalanobis detector is fitted on training images (plus one augmented copy for models trained with
augmentation); a max-softmax one (models trained with outlier exposure) needs no fit. Digit models
calibrate the threshold on realistic uploads: 97% of the held-out digits and 97% of the regression
populations (photos, canvas exports, low-resolution scans, outlined strokes;
``training_worker.populations``) pass, where MNIST held-out alone would flag 12% of real uploads
(docs/models.md, "Evaluation by population").
Temperature scaling is fitted on held-out logits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from digitflow.reference import (
    INPUT_STATS,
    MAHALANOBIS,
    MAX_SOFTMAX,
    Reference,
    fit_detector,
    ink_stats,
    save_reference,
)
from digitnet.loading import load_model
from digitnet.net import DigitNet
from training_worker.augment import AugmentConfig, augment
from training_worker.datasets import DIGIT_LABELS, Dataset, load_dataset
from training_worker.populations import realistic_uploads
from training_worker.trainer import to_tensor

log = logging.getLogger("training_worker.calibrate")
INLIER_PASS = 0.97  # issue 15's target: at most 3% of real digit uploads flagged
MAX_FIT = 16_000
REFERENCE_SAMPLE = 500


def features_and_logits(net: DigitNet, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(N, 128) penultimate features and (N, K) logits of uint8 (N, 28, 28) images, one pass each."""
    net.eval()
    feats, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = to_tensor(images[start : start + batch]).contiguous(memory_format=torch.channels_last)
            emb = net.penultimate(x)
            feats.append(emb.float().numpy())
            logits.append(net.fc2(emb).float().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising held-out negative log-likelihood (bounded to [0.05, 20])."""

    def nll(t: float) -> float:
        return float(-log_softmax(logits / t, axis=1)[np.arange(len(labels)), labels].mean())

    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)


def build_reference(net: DigitNet, ds: Dataset, seed: int = 0) -> Reference:
    """Detector + reference statistics of ``net`` on the data set ``ds`` trains and holds out."""
    rng = np.random.default_rng(seed)
    # Drawn for either detector: the reference sample below comes from the same stream.
    take = rng.permutation(len(ds.x_train))[:MAX_FIT]
    digit_model = ds.labels == DIGIT_LABELS
    # Trained with outlier exposure, the network itself keeps a flat softmax for non-digits, and
    # its max-softmax separates them (AUROC 0.97 against 0.66 for Mahalanobis on its features,
    # which exposure pulls towards the class means: docs/models.md); without, Mahalanobis.
    detector = MAX_SOFTMAX if len(ds.x_outlier) else MAHALANOBIS
    held_feats, held_logits = features_and_logits(net, ds.x_held)
    x_uploads, y_uploads = realistic_uploads() if digit_model else (None, None)
    uploads = features_and_logits(net, x_uploads) if x_uploads is not None else None
    if detector == MAHALANOBIS:
        x_fit, y_fit = ds.x_train[take], ds.y_train[take]
        if ds.augment:
            gen = torch.Generator().manual_seed(seed)
            aug = augment(to_tensor(x_fit), gen, AugmentConfig())
            x_aug = (aug.squeeze(1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            x_fit, y_fit = np.concatenate([x_fit, x_aug]), np.concatenate([y_fit, y_fit])
        means, precision = fit_detector(features_and_logits(net, x_fit)[0], y_fit, len(ds.labels))
    else:
        # Max-softmax scores from the logits alone: the class means and precision are kept (every
        # reference has the same arrays) but fitted on the features already at hand, held-out and
        # realistic uploads, instead of a forward pass over 32,000 training images (most of a
        # retrain's calibration time on a CPU).
        feats, labels = held_feats, ds.y_held
        if uploads is not None and y_uploads is not None:
            feats = np.concatenate([feats, uploads[0]])
            labels = np.concatenate([labels, y_uploads])
        means, precision = fit_detector(feats, labels, len(ds.labels))
    empty = np.zeros(0)
    ref = Reference(
        means, precision, 0.0, 1.0, empty, empty, np.zeros((0, 1)), empty, empty, empty, {"detector": detector}
    )
    scores = ref.scores(held_feats, held_logits)
    ref.threshold = float(np.quantile(scores, INLIER_PASS))
    if uploads is not None:  # and as many of the realistic uploads pass
        ref.threshold = max(ref.threshold, float(np.quantile(ref.scores(*uploads), INLIER_PASS)))
    ref.temperature = fit_temperature(held_logits.astype(np.float64), ds.y_held)
    probs = softmax(held_logits.astype(np.float64), axis=1)
    pred = probs.argmax(axis=1)
    ref.class_freq = np.bincount(pred, minlength=len(ds.labels)).astype(np.float64) / len(pred)
    sample = rng.permutation(len(ds.x_held))[:REFERENCE_SAMPLE]
    ref.maxprob = probs.max(axis=1)[sample].astype(np.float32)
    ref.embeddings = held_feats[sample].astype(np.float16)
    stats = np.array([ink_stats(img) for img in ds.x_held[sample]], dtype=np.float32)
    for i, name in enumerate(INPUT_STATS):
        setattr(ref, name, stats[:, i])
    ref.meta = {
        "heldout_accuracy": round(float((pred == ds.y_held).mean()), 4),
        "n": len(ds.y_held),
        "dataset": ds.name,
        "inlier_pass": INLIER_PASS,
        "detector": detector,
        "calibrated_on": "held-out + regression populations" if digit_model else "held-out",
    }
    log.info("reference: threshold %.2f, temperature %.3f", ref.threshold, ref.temperature)
    return ref


def calibrate_dir(model_dir: Path, name: str, ds: Dataset | None = None) -> Reference:
    """Compute and write ``reference.safetensors`` for the version in ``model_dir`` (model ``name``)."""
    loaded = load_model(model_dir, device="cpu", threads=max(1, torch.get_num_threads()))
    ref = build_reference(loaded.net, ds or load_dataset(name))
    save_reference(model_dir, ref)
    return ref
