"""Training augmentations: shape/dtype/range preserved, seeded, and actually changing images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from tests.model_dirs import MNIST_NPZ
from training_worker.augment import (
    AugmentConfig,
    augment,
    random_affine,
    random_blur,
    random_photometric,
    random_thickness,
)

DATA = MNIST_NPZ


@pytest.fixture(scope="module")
def digits() -> Tensor:
    with np.load(DATA, allow_pickle=False) as data:
        images = data["images"][::100]  # 50 digits, every class
    return torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)


def test_shape_dtype_range_and_input_untouched(digits: Tensor) -> None:
    before = digits.clone()
    out = augment(digits, torch.Generator().manual_seed(0))
    assert out.shape == digits.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(digits, before)


def test_deterministic_under_a_seed(digits: Tensor) -> None:
    a = augment(digits, torch.Generator().manual_seed(7))
    b = augment(digits, torch.Generator().manual_seed(7))
    c = augment(digits, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_changes_images_but_keeps_the_digit(digits: Tensor) -> None:
    out = augment(digits, torch.Generator().manual_seed(0))
    per_image_change = (out - digits).abs().mean(dim=(1, 2, 3))
    assert bool((per_image_change > 0.005).all())
    # Still mostly background with ink present: nothing is wiped out or flooded (a thin 1
    # squeezed to 0.6 of its width keeps about 2% of the frame as ink).
    ink = out.mean(dim=(1, 2, 3))
    assert bool((ink > 0.01).all()) and bool((ink < 0.5).all())


CFG = AugmentConfig(p_dilate=0.5, p_erode=0.5, p_blur=1.0)
STEPS: dict[str, Callable[[Tensor, AugmentConfig, torch.Generator], Tensor]] = {
    "affine": random_affine,
    "thickness": random_thickness,
    "blur": random_blur,
    "photometric": random_photometric,
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_changes_images_and_keeps_shape(digits: Tensor, step: str) -> None:
    out = STEPS[step](digits, CFG, torch.Generator().manual_seed(1))
    assert out.shape == digits.shape and out.dtype == digits.dtype
    assert float((out - digits).abs().mean()) > 0.005


def test_identity_config_is_a_no_op(digits: Tensor) -> None:
    cfg = AugmentConfig(
        rotation_deg=0,
        shear=0,
        scale=(1, 1),
        aspect=(1, 1),
        shift_px=0,
        p_dilate=0,
        p_erode=0,
        p_blur=0,
        peak=(1, 1),
        gamma=(1, 1),
        max_noise_std=0,
    )
    out = augment(digits, torch.Generator().manual_seed(0), cfg)
    assert float((out - digits).abs().max()) < 1e-5


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(4, 28, 28), torch.zeros(4, 3, 28, 28), torch.zeros(4, 1, 32, 32), torch.zeros(4, 1, 28, 28).byte()],
)
def test_rejects_other_shapes_and_dtypes(bad: Tensor) -> None:
    with pytest.raises(ValueError, match=r"expected a float \(N, 1, 28, 28\) tensor"):
        augment(bad, torch.Generator().manual_seed(0))


def test_empty_batch(digits: Tensor) -> None:
    assert augment(digits[:0], torch.Generator()).shape == (0, 1, 28, 28)


def test_heavy_thickening_is_a_second_dilation_and_off_by_default(digits: Tensor) -> None:
    import dataclasses

    every = dataclasses.replace(AugmentConfig(), p_dilate=1.0, p_erode=0.0)
    once = random_thickness(digits, every, torch.Generator().manual_seed(3))
    twice = random_thickness(digits, dataclasses.replace(every, p_heavy=1.0), torch.Generator().manual_seed(3))
    ink = lambda x: float((x > 0.5).float().mean())  # noqa: E731
    assert ink(twice) > 1.3 * ink(once) > 1.3 * ink(digits)  # 5x5 thickens well past 3x3
    # Off (the default) it draws nothing more than the choice and blend per image, as before it
    # existed, so a model trained without it is reproduced exactly by the same seed.
    used, fresh = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    random_thickness(digits, AugmentConfig(), used)
    n = digits.shape[0]
    torch.rand(n, generator=fresh), torch.rand(n, generator=fresh)
    assert AugmentConfig().p_heavy == 0.0 and torch.equal(used.get_state(), fresh.get_state())
