"""The drift statistics the monitor computes, as pure functions of arrays (scipy for the tests).

- prediction drift: Pearson chi-square of the window's predicted-class counts against the
  reference class frequencies, and the population stability index (PSI) of the two distributions;
- confidence and input drift: two-sample Kolmogorov-Smirnov (max-probability; ink ratio, mean
  intensity, aspect);
- embedding drift: squared maximum mean discrepancy (MMD, Gaussian kernel, median-heuristic
  bandwidth) between bounded samples, with a permutation test for its p-value;
- estimated accuracy: the mean temperature-calibrated max-probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

EPS = 1e-4


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def chi_square(counts: np.ndarray, reference_freq: np.ndarray) -> TestResult:
    """Chi-square goodness of fit of ``counts`` to ``reference_freq`` (smoothed so that a class the
    reference never predicted does not divide by zero). ValueError for an empty window."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no observations")
    freq = np.asarray(reference_freq, dtype=np.float64) + EPS
    expected = freq / freq.sum() * total
    result = stats.chisquare(counts, expected)
    return TestResult(float(result.statistic), float(result.pvalue))


def psi(counts: np.ndarray, reference_freq: np.ndarray) -> float:
    """Population stability index sum((p - q) * ln(p / q)), both smoothed; 0 = identical,
    above 0.2 is the usual "significant shift"."""
    p = np.asarray(counts, dtype=np.float64) + EPS
    p /= p.sum()
    q = np.asarray(reference_freq, dtype=np.float64) + EPS
    q /= q.sum()
    return float(np.sum((p - q) * np.log(p / q)))


def ks(sample: np.ndarray, reference: np.ndarray) -> TestResult:
    """Two-sample Kolmogorov-Smirnov statistic and p-value; ValueError if a sample is empty."""
    a, b = np.asarray(sample, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("empty sample")
    result = stats.ks_2samp(a, b)
    return TestResult(float(result.statistic), float(result.pvalue))


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("nd,nd->n", x, x)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


def mmd_permutation(
    x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0, max_n: int = 300
) -> TestResult:
    """Squared MMD (biased estimator, Gaussian kernel with the median pairwise distance as
    bandwidth) between samples ``x`` and ``y`` (each capped at ``max_n`` rows), and the share of
    label permutations with an MMD at least as large (add-one smoothed p-value)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("MMD needs at least two rows per sample")
    if len(x) > max_n:
        x = x[rng.choice(len(x), max_n, replace=False)]
    if len(y) > max_n:
        y = y[rng.choice(len(y), max_n, replace=False)]
    z = np.concatenate([x, y])
    d2 = _sq_dists(z)
    bandwidth = float(np.median(d2[np.triu_indices(len(z), 1)])) or 1.0
    k = np.exp(-d2 / bandwidth)
    n, m = len(x), len(y)
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])

    def stat(idx: np.ndarray) -> float:
        # MMD^2 (biased) = w^T K w with w = +1/n on one sample and -1/m on the other.
        w = weights[np.argsort(idx)]
        return float(w @ k @ w)

    observed = stat(np.arange(len(z)))
    greater = sum(stat(rng.permutation(len(z))) >= observed for _ in range(permutations))
    return TestResult(observed, (greater + 1) / (permutations + 1))


def estimated_accuracy(calibrated_maxprob: np.ndarray) -> float | None:
    """Mean calibrated max-probability: the accuracy expected without labels (None if empty)."""
    values = np.asarray(calibrated_maxprob, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None
