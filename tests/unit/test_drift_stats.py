"""Each drift statistic on constructed cases: no drift stays quiet, a clear drift is found."""

from __future__ import annotations

import numpy as np
import pytest

from monitor_worker import drift_stats as ds

REF_FREQ = np.full(10, 0.1)


def test_chi_square_and_psi_quiet_without_drift_loud_with_it() -> None:
    rng = np.random.default_rng(0)
    same = ds.class_counts(rng.integers(0, 10, 1000), 10)
    chi = ds.chi_square(same, REF_FREQ)
    assert chi.p_value > 0.01 and ds.psi(same, REF_FREQ) < 0.05
    skewed = ds.class_counts(rng.choice(10, 1000, p=[0.4, *[0.6 / 9] * 9]), 10)
    chi = ds.chi_square(skewed, REF_FREQ)
    assert chi.p_value < 1e-6 and ds.psi(skewed, REF_FREQ) > 0.2
    with pytest.raises(ValueError):
        ds.chi_square(np.zeros(10), REF_FREQ)


def test_psi_of_identical_distributions_is_zero_and_a_missing_class_is_finite() -> None:
    assert ds.psi(np.full(10, 50), REF_FREQ) == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(ds.psi(np.array([100, 0, 0, 0, 0, 0, 0, 0, 0, 0]), REF_FREQ))


def test_ks_on_confidence_like_samples() -> None:
    rng = np.random.default_rng(1)
    ref = rng.beta(20, 1, 500)
    assert ds.ks(rng.beta(20, 1, 300), ref).p_value > 0.01
    shifted = ds.ks(rng.beta(5, 1, 300), ref)
    assert shifted.p_value < 1e-6 and shifted.statistic > 0.3
    with pytest.raises(ValueError):
        ds.ks(np.array([]), ref)


def test_mmd_permutation_test_on_embeddings() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, (300, 16))
    same = ds.mmd_permutation(rng.normal(0, 1, (300, 16)), ref, permutations=100)
    assert same.p_value > 0.01
    moved = ds.mmd_permutation(rng.normal(0.4, 1, (300, 16)), ref, permutations=100)
    assert moved.p_value < 0.02 and moved.statistic > same.statistic
    assert moved.p_value >= 1 / 101  # add-one smoothed: never exactly 0


def test_mmd_caps_the_sample_sizes_and_needs_two_rows() -> None:
    rng = np.random.default_rng(3)
    result = ds.mmd_permutation(rng.normal(0, 1, (2000, 4)), rng.normal(0, 1, (2000, 4)), 20, max_n=100)
    assert 0 < result.p_value <= 1
    with pytest.raises(ValueError):
        ds.mmd_permutation(np.zeros((1, 4)), np.zeros((5, 4)))


def test_estimated_accuracy_is_the_mean_calibrated_confidence() -> None:
    assert ds.estimated_accuracy(np.array([0.9, 0.7, np.nan])) == pytest.approx(0.8)
    assert ds.estimated_accuracy(np.array([])) is None
