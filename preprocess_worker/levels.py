"""Grey levels of the preprocess stage: histogram quantiles, Otsu's threshold, background
subtraction and the ink threshold (used by `preprocess_worker.steps.normalize`).

Everything here reads 256-bin histograms where it can: a histogram is one pass over the frame,
and every quantile after it costs 256 steps instead of another pass (issue 14).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from preprocess_worker import strokes

MIN_CONTRAST = 24.0  # on 0..255: fainter marks are paper texture or JPEG noise, not ink
_WINDOW = 0.25  # background window, as a share of the long side: wider than strokes, narrower than shadows
_LEVELS = np.arange(256)


def histogram(levels: np.ndarray) -> np.ndarray:
    """The 256-bin histogram of a 2-D uint8 array (Pillow's count: a few times numpy's speed,
    which first widens every byte to an index)."""
    return np.asarray(Image.fromarray(levels).histogram())


def hist_quantiles(hist: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles, to one grey level, of the values a 256-bin histogram counts."""
    cumulative = np.cumsum(hist)
    return np.searchsorted(cumulative, np.asarray(qs) * (cumulative[-1] - 1), side="right").astype(np.float64)


def quantiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles of values on the 0..255 scale (clipped, truncated), to one grey level."""
    if values.dtype != np.uint8:
        values = np.clip(values, 0, 255).astype(np.uint8)
    return hist_quantiles(histogram(values), qs)


def otsu(hist: np.ndarray) -> float:
    """Otsu's threshold of a 256-bin histogram: the level that best splits it in two classes."""
    share = np.cumsum(hist) / hist.sum()
    mean = np.cumsum(hist * _LEVELS) / hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * share - mean) ** 2 / (share * (1.0 - share))
    between[~np.isfinite(between)] = 0.0  # empty classes: no split there
    return float(np.argmax(between))


def remove_background(levels: np.ndarray) -> np.ndarray:
    """Subtract the background of a uint8 frame: a constant where it is flat (canvases, scans,
    MNIST itself), else a grey opening, which follows lighting gradients and shadows and erases
    bright structures narrower than its window (so it would hollow very thick blobs: hence not
    used on flat backgrounds). The opening runs on a 4x mean-pooled copy: 16x cheaper, and
    pooling dilutes specks and glare that would otherwise print their own halo.

    Returns uint8 (a flat background: exact integers) or float32, in 0..255 either way.
    """
    hist = histogram(levels)
    # Flat: the frame's border ring (a tenth of it may be ink) and what lies below Otsu's level
    # (whose top quarter is mostly anti-aliased stroke edges) both vary by a few levels at most.
    # The values below Otsu's level are the histogram's bins up to it: no pass over the frame.
    height, width = levels.shape
    ring = max(1, round(0.04 * min(height, width)))
    strips = (levels[:ring], levels[-ring:], levels[:, :ring], levels[:, -ring:])
    border = np.bincount(np.concatenate([strip.ravel() for strip in strips]), minlength=256)
    low, median, high = hist_quantiles(hist[: int(otsu(hist)) + 1], (0.02, 0.5, 0.75))
    edge_low, edge_high = hist_quantiles(border, (0.02, 0.9))
    if max(high - low, edge_high - edge_low) <= MIN_CONTRAST / 2:
        level = np.uint8(median)
        return np.maximum(levels, level) - level
    pool = 4 if min(height, width) >= 64 else 1
    if pool > 1:
        # Means of 4x4 blocks of integers (float, summed in double): exactly two rounds of
        # halving; the partial blocks at the far edges are left out.
        box = (0, 0, width // pool * pool, height // pool * pool)
        small = np.asarray(Image.fromarray(levels).convert("F").reduce(pool, box=box))
    else:
        small = levels.astype(np.float32)
    # A wide soft stroke (a low-resolution scan blown up) can be as wide as the window: widen it.
    window = strokes.stroke_window(small, max(3, round(_WINDOW * max(height, width) / pool)))
    background = ndimage.grey_opening(small, size=window)
    if pool > 1:
        background = np.asarray(Image.fromarray(background).resize((width, height), Image.Resampling.BILINEAR))
    clean = np.subtract(levels, background, dtype=np.float32)
    return np.maximum(clean, 0.0, out=clean)


def ink_levels(clean: np.ndarray) -> tuple[float, float]:
    """Return (noise level, ink threshold) of a flattened frame (0..255): Otsu, floored above the
    noise and a minimum contrast."""
    levels = clean if clean.dtype == np.uint8 else clean.astype(np.uint8)  # in 0..255: truncates
    counts = histogram(levels)
    hist = counts.astype(np.float64)
    level = otsu(hist)
    median = float(np.searchsorted(np.cumsum(hist), hist.sum() / 2))
    # The spread |level - median| has its histogram in the frame's: one bin per distance.
    spread = np.bincount(np.abs(_LEVELS - int(median)), weights=hist, minlength=256)
    sigma = 1.4826 * float(hist_quantiles(spread, (0.5,))[0])
    median, sigma = strokes.background_class(levels, hist, level, median, sigma)
    threshold = max(level, median + max(5 * sigma, MIN_CONTRAST))
    return min(median + 2 * sigma, threshold / 2), threshold
