"""Pure image code of the preprocess stage: upload bytes -> ink map -> 28x28 MNIST-style digit.

No Redis and no Celery here: the task calls :func:`preprocess` and ships the 784 bytes on.
Preprocessing is most of the system's CPU, so every step works on small images: JPEGs are
decoded at a reduced DCT scale and everything is shrunk to ``work_size`` before any float math.
The steps live by role in decoding.py (bytes -> ink map), levels.py (background and threshold),
components.py (which marks are the digit) and shaping.py (stroke width, scale, centring); this
module strings them together and keeps the public entry points.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from digitflow.errors import NoInkError
from preprocess_worker.components import join_faint, keep_digit, percentile
from preprocess_worker.decoding import WORK_SIZE, decode_array, shrink, working_mode
from preprocess_worker.levels import MIN_CONTRAST, ink_levels, remove_background
from preprocess_worker.shaping import BOX, SIDE, centre, shape

__all__ = ["BOX", "SIDE", "decode", "normalize", "preprocess"]

_MARGIN = 3  # px kept around the digit's box: anti-aliased stroke edges sit just under the threshold
_SOFT = 2  # px the kept mask is grown by (a 5x5 square) to keep those edges, as grey
_FAINT = 0.5  # hysteresis: marks over this share of the ink threshold that touch the digit are ink


def preprocess(data: bytes, max_pixels: int, work_size: int = WORK_SIZE) -> bytes:
    """Turn upload bytes into 784 row-major uint8 bytes, a 28x28 digit with bright ink
    (``work_size``: the long side the per-pixel steps work at; bench.preprocess_cost compares sizes).

    Raises the errors of :func:`decode` and :func:`normalize`, all DigitflowError subclasses.
    """
    return _normalize_levels(_working_levels(decode_array(data, max_pixels, work_size))).tobytes()


def decode(data: bytes, max_pixels: int, work_size: int = WORK_SIZE) -> Image.Image:
    """Decode an upload into an 8-bit ink map (ink bright, background dark), upright per EXIF,
    at most ``work_size`` pixels on its long side.

    Raises what :func:`~digitflow.images.inspect_image` raises, and InvalidImageError when the
    pixel data turns out corrupt or truncated while decoding.
    """
    return Image.fromarray(decode_array(data, max_pixels, work_size))


def normalize(ink: Image.Image) -> np.ndarray:
    """Prepare an ink map as MNIST was prepared: a (28, 28) uint8 array, ink bright.

    The background is flattened, ink found by thresholding, specks and page edges dropped, the
    digit cropped, thickened when its strokes would be thinner than MNIST's, scaled so its longer
    side is 20 px, and placed with its centre of mass at (14, 14). Raises NoInkError when nothing
    ink-like is found.
    """
    img = ink if ink.mode == "L" else working_mode(ink)
    if img.mode != "L":
        img = img.convert("L")
    if max(img.size) > 512:
        img = shrink(img, 512)
    return _normalize_levels(_working_levels(np.asarray(img)))


def _working_levels(levels: np.ndarray) -> np.ndarray:
    """A uint8 ink map, enlarged when tiny (an MNIST-sized upload) to give the filters room."""
    long_side = max(levels.shape)
    if long_side >= 96:
        return levels
    factor = -(-96 // long_side)
    height, width = levels.shape
    img = Image.fromarray(levels).resize((width * factor, height * factor), Image.Resampling.BILINEAR)
    return np.asarray(img)


def _normalize_levels(levels: np.ndarray) -> np.ndarray:
    clean = remove_background(levels)
    noise, threshold = ink_levels(clean)
    labels, keep, box = keep_digit(clean, threshold)
    low = max(_FAINT * threshold, MIN_CONTRAST / 2)
    (ry, rx), strong, joined = join_faint(clean, labels, keep, box, low)
    # Anti-aliased stroke edges sit just under the threshold: keep them, as grey. Only the
    # digit's surroundings are ever labelled and masked.
    rows, cols = np.flatnonzero(joined.any(axis=1)), np.flatnonzero(joined.any(axis=0))
    y0, y1 = max(int(rows[0]) - _MARGIN, 0), min(int(rows[-1]) + 1 + _MARGIN, joined.shape[0])
    x0, x1 = max(int(cols[0]) - _MARGIN, 0), min(int(cols[-1]) + 1 + _MARGIN, joined.shape[1])
    mask, strong = joined[y0:y1, x0:x1], strong[y0:y1, x0:x1]
    clean = clean[ry + y0 : ry + y1, rx + x0 : rx + x1]
    # The peak is the strong strokes': a joined hairline stays as faint as it was drawn.
    peak = percentile(clean[strong], 98)
    soft = np.clip((clean - noise) / max(peak - noise, 1e-3), 0.0, 1.0)
    soft *= _grow(mask, _SOFT)
    rows, cols = np.flatnonzero(soft.any(axis=1)), np.flatnonzero(soft.any(axis=0))
    if not len(rows):
        raise NoInkError("No ink was found in the image.")
    return centre(shape(soft[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))


def _grow(mask: np.ndarray, by: int) -> np.ndarray:
    """``mask`` dilated by a (2*by+1)-square, cut at the frame: two 1-D passes of shifted ORs
    (what a maximum filter of that size gives, without scipy's set-up cost)."""
    height, width = mask.shape
    padded = np.zeros((height + 2 * by, width), dtype=bool)
    for dy in range(2 * by + 1):
        padded[dy : dy + height] |= mask
    rows = padded[by : by + height]
    out = np.zeros((height, width + 2 * by), dtype=bool)
    for dx in range(2 * by + 1):
        out[:, dx : dx + width] |= rows
    return out[:, by : by + width]
