"""On-the-fly training augmentations: vectorised torch ops over a whole batch, seeded.

The deployed model sees phone photos and browser canvas drawings after MNIST-style preprocessing
(crop to ink, longest side 20 px, centred by mass in 28x28), not only scanned MNIST. Those differ
from MNIST mainly in slant, width and placement (affine), stroke width (canvas brushes are thick, pens
thin: dilation/erosion), focus (blur), ink darkness and lighting (peak contrast, gamma) and sensor
noise. Every draw comes from the caller's ``torch.Generator``, so a seed fixes the output exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SIZE = 28


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; each is drawn independently per image."""

    rotation_deg: float = 15.0
    shear: float = 0.3
    scale: tuple[float, float] = (0.85, 1.1)
    # Width over height, on top of the scale: narrow handwriting (a felt-tip 0 a third as wide as
    # tall) and wide, rounded digits.
    aspect: tuple[float, float] = (0.6, 1.15)
    shift_px: float = 2.5
    # Thickness: a per-image blend towards a 3x3 dilation (thicker) or erosion (thinner).
    p_dilate: float = 0.3
    p_erode: float = 0.2
    # A second dilation pass (5x5) for this share: canvas brushes a quarter of the digit's height
    # close loops and gaps, which one 3x3 pass at 28 px never shows. 0 draws no random numbers,
    # so a model trained without it is reproduced exactly.
    p_heavy: float = 0.0
    max_erode_blend: float = 0.6
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.0)
    peak: tuple[float, float] = (0.6, 1.0)
    gamma: tuple[float, float] = (0.6, 1.6)
    max_noise_std: float = 0.05


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_affine(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Rotate, shear, scale and shift each image by its own random amounts (bilinear, zero fill)."""
    n, dev = x.shape[0], x.device
    angle = _uniform(n, -cfg.rotation_deg, cfg.rotation_deg, gen, dev) * (math.pi / 180)
    shear = _uniform(n, -cfg.shear, cfg.shear, gen, dev)
    # A log-uniform scale keeps shrinking and growing equally likely around 1.
    scale = torch.exp(_uniform(n, math.log(cfg.scale[0]), math.log(cfg.scale[1]), gen, dev))
    scale_x = scale * torch.exp(_uniform(n, math.log(cfg.aspect[0]), math.log(cfg.aspect[1]), gen, dev))
    # affine_grid works in [-1, 1] coordinates, where one pixel is 2/SIZE.
    shift = _uniform(2 * n, -cfg.shift_px, cfg.shift_px, gen, dev).view(n, 2) * (2 / SIZE)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Forward map M = R @ Sh @ diag(scale_x, scale); affine_grid wants the inverse (output ->
    # input coordinates), x first.
    m = torch.zeros(n, 2, 2, device=dev)
    m[:, 0, 0] = cos * scale_x
    m[:, 0, 1] = (cos * shear - sin) * scale
    m[:, 1, 0] = sin * scale_x
    m[:, 1, 1] = (sin * shear + cos) * scale
    inv = torch.linalg.inv(m)
    theta = torch.cat([inv, -(inv @ shift.unsqueeze(2))], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_thickness(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Thicken some images (blend towards a max-pool dilation), thin others (min-pool erosion)."""
    n, dev = x.shape[0], x.device
    choice = torch.rand(n, generator=gen, device=dev)
    blend = torch.rand(n, generator=gen, device=dev)
    dilate_w = torch.where(choice < cfg.p_dilate, blend, 0.0).view(n, 1, 1, 1)
    is_erode = (choice >= cfg.p_dilate) & (choice < cfg.p_dilate + cfg.p_erode)
    # Erosion is capped: a full 3x3 erosion wipes out the thin strokes of many MNIST digits.
    erode_w = torch.where(is_erode, blend * cfg.max_erode_blend, 0.0).view(n, 1, 1, 1)
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    if cfg.p_heavy > 0:
        heavy = (torch.rand(n, generator=gen, device=dev) < cfg.p_heavy) & (dilate_w.view(n) > 0)
        twice = F.max_pool2d(dilated, 3, stride=1, padding=1)
        dilated = torch.where(heavy.view(n, 1, 1, 1), twice, dilated)
    return x + dilate_w * (dilated - x) + erode_w * (eroded - x)


def random_blur(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Gaussian-blur a random subset with per-image sigma, as one grouped 5x5 convolution."""
    n, dev = x.shape[0], x.device
    sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, dev)
    apply = torch.rand(n, generator=gen, device=dev) < cfg.p_blur
    # A tiny sigma makes the kernel a delta: unblurred images go through the same conv.
    sigma = torch.where(apply, sigma, 1e-3).view(n, 1, 1)
    r = torch.arange(-2, 3, device=dev, dtype=x.dtype)
    k = torch.exp(-(r.view(1, 5, 1) ** 2 + r.view(1, 1, 5) ** 2) / (2 * sigma**2))
    k = (k / k.sum(dim=(1, 2), keepdim=True)).unsqueeze(1)
    out = F.conv2d(x.view(1, n, SIZE, SIZE), k, padding=2, groups=n)
    return out.view(n, 1, SIZE, SIZE)


def random_photometric(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Apply a random gamma and peak ink level, then add Gaussian noise of random strength."""
    n, dev = x.shape[0], x.device
    gamma = torch.exp(_uniform(n, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), gen, dev)).view(n, 1, 1, 1)
    peak = _uniform(n, cfg.peak[0], cfg.peak[1], gen, dev).view(n, 1, 1, 1)
    noise_std = _uniform(n, 0.0, cfg.max_noise_std, gen, dev).view(n, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)
    # clamp before pow: bilinear resampling can leave values a hair outside [0, 1].
    return (x.clamp(0, 1) ** gamma * peak + noise * noise_std).clamp(0, 1)


def augment(x: Tensor, gen: torch.Generator, cfg: AugmentConfig | None = None) -> Tensor:
    """Return an augmented copy of ``x``: float (N, 1, 28, 28) in [0, 1] in, same shape/dtype/range out.

    The input is not modified. Raises ValueError for any other shape or a non-float dtype.
    """
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, SIZE, SIZE) or not x.is_floating_point():
        raise ValueError(f"expected a float (N, 1, {SIZE}, {SIZE}) tensor, got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] == 0:
        return x.clone()
    cfg = cfg or AugmentConfig()
    x = random_affine(x, cfg, gen)
    x = random_thickness(x, cfg, gen)
    x = random_blur(x, cfg, gen)
    return random_photometric(x, cfg, gen)
