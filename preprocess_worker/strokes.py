"""Stroke-shape measures that `steps.normalize` uses to keep wide soft strokes and outlined strokes.

Split out of steps.py to keep it readable; pure numpy/scipy, no state. Each function looks at one
failure mode of uploads that are not MNIST-like (issue 15, docs/models.md "Evaluation by population"):
a low-resolution scan blown up (strokes as wide as the background window), a tightly cropped digit
whose wide strokes cover half the frame, and an outlined ("bubble") stroke.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_STROKE_WINDOW = 5.0  # opening window over the widest core half-width
_CORE_LEVEL = 0.7  # a stroke's core: over this share of the frame's ink contrast (shadows stay under)
_CORE_EDGE = 0.25  # how far a stroke core stands above the ring around it, share of the contrast
_MAX_WINDOW = 0.5  # widened window, share of the long side
_EDGE_RING = 1 / 16  # the ring a stroke core must stand above, share of the long side (min 2 px)
_MIN_BACKGROUND = 0.1  # the share of the frame that the background class must fill to be trusted
_COHERENT = 0.9  # _coherence of an ink class that is strokes, not speckle
_TUBE_ELONGATION = 3.0  # hole area over its inscribed disc's
_TUBE_WIDTH = 0.12  # hole half-width, share of the long side


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    hist = np.bincount(np.clip(values, 0, 255).astype(np.uint8).ravel(), minlength=256)
    cumulative = np.cumsum(hist)
    return np.searchsorted(cumulative, np.asarray(qs) * (cumulative[-1] - 1), side="right").astype(np.float64)


def stroke_window(small: np.ndarray, window: int) -> int:
    """The background-opening window for ``small`` (ink bright, 0..255): ``window``, widened past
    the widest stroke when the strokes have sharp-edged cores.

    A grey opening takes every bright structure wider than its window for background: a wide, soft
    stroke filling the frame would be subtracted with it and leave only its crest. The half-width
    of the strokes' cores bounds the stroke; the window is five times that, for the soft flanks.
    """
    low, high = _quantiles(small, (0.05, 0.995))
    core = small > low + _CORE_LEVEL * (high - low)
    if not core.any():
        return window
    # Only cores with an edge: a lighting gradient or a shadow also has a bright part, but it
    # fades slowly into its surroundings, where a stroke falls off within a few pixels.
    # The ring: within a city-block distance of the core (what repeated cross dilations reach),
    # from one distance transform instead of one dilation pass per pixel of reach.
    reach = max(2, round(max(small.shape) * _EDGE_RING))
    ring = ndimage.distance_transform_cdt(~core, metric="taxicab") <= reach
    ring &= ~core
    if ring.any() and float(small[core].mean() - small[ring].mean()) > _CORE_EDGE * (high - low):
        half = float(ndimage.distance_transform_cdt(core, metric="chessboard").max())
        window = max(window, min(round(_STROKE_WINDOW * half), round(_MAX_WINDOW * max(small.shape))))
    return min(window, max(small.shape))


def background_class(
    levels: np.ndarray, hist: np.ndarray, otsu: float, median: float, sigma: float
) -> tuple[float, float]:
    """(background level, noise) of a flattened frame ``levels`` (uint8) with 256-bin histogram
    ``hist``, given its Otsu level and its overall median and robust spread.

    A tightly cropped digit with wide strokes covers much of the frame: its median, and the spread
    around it, are then partly ink. When Otsu's classes are far apart (ink, not noise split in two)
    the background class's median is used instead, with its noise from the dark side of it, where
    no ink is. Apart means: by 8 background noise levels, and by 2.5 overall spreads unless the
    ink class is one coherent area (noise split in two is speckled; a wide stroke is not: its
    spread is ink, not noise). Blank, noisy and gradient pages keep the overall statistics.
    """
    cut = int(otsu) + 1
    back = hist[:cut]
    if back.sum() < _MIN_BACKGROUND * hist.sum():
        return median, sigma
    cumulative = np.cumsum(back)
    bg = float(np.searchsorted(cumulative, cumulative[-1] / 2))
    below = cumulative[: int(bg) + 1]
    bg_sigma = 1.4826 * max(bg - float(np.searchsorted(below, below[-1] / 2)), 0.5)
    ink_mean = float((hist[cut:] * np.arange(cut, 256)).sum() / max(hist[cut:].sum(), 1))
    # The coherence costs passes over the frame: only measured when it decides.
    far = ink_mean - bg > 8 * bg_sigma and bg < median
    if far and (ink_mean - bg > 2.5 * sigma or _coherence(levels > otsu) >= _COHERENT):
        return bg, min(sigma, bg_sigma)
    return median, sigma


def _coherence(mask: np.ndarray) -> float:
    """P(a pixel's right or lower neighbour is in ``mask`` | the pixel is): about the mask's share
    for speckle noise, near 1 for strokes a few pixels wide or wider."""
    pairs = float(mask[:, :-1].sum() + mask[:-1].sum())
    both = float((mask[:, :-1] & mask[:, 1:]).sum() + (mask[:-1] & mask[1:]).sum())
    return both / pairs if pairs else 0.0


def fill_tubes(core: np.ndarray) -> np.ndarray | None:
    """``core`` with its long, narrow holes (an outlined stroke's inside) filled in; None when it
    has none. Round holes (the loops of 0, 6, 8, 9) are kept."""
    labels, count = ndimage.label(~core)
    if count < 2:
        return None
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    depth = ndimage.distance_transform_edt(labels > 0)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    radius = ndimage.maximum(depth, labels, index=np.arange(count + 1))
    tube = (areas >= _TUBE_ELONGATION * np.pi * np.square(radius)) & (radius <= _TUBE_WIDTH * max(core.shape))
    tube[edge] = False
    tube[0] = False
    if not tube.any():
        return None
    return core | tube[labels]
