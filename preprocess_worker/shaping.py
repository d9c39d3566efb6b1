"""The digit's shape at MNIST's scale (used by `preprocess_worker.steps.normalize`): a cropped
digit is thickened when its strokes would be thinner than MNIST's, scaled so its longer side is
BOX px and placed on SIDE x SIDE with its centre of mass in the middle.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from digitflow.errors import NoInkError
from preprocess_worker import strokes

SIDE = 28
BOX = 20
_FINE = 4  # the digit is shaped at BOX*_FINE px, then box-reduced, which leaves MNIST-like soft edges
# Stroke widths at 28x28, in pixels: MNIST's median is 2.4 and 95% of its digits are over 1.6.
_STROKE = 2.4
_THIN = 1.5  # strokes thinner than this are thickened to _STROKE


def shape(crop: np.ndarray) -> np.ndarray:
    """Scale a cropped digit (0..1) so its longer side is BOX px, thickening thin strokes first."""
    fine = resize_long(crop, BOX * _FINE, Image.Resampling.BILINEAR)
    core = fine > 0.5
    if core.any():
        grow = _growth(core)
        if grow > 0:
            # Outlined ("hollow") strokes: a thin line drawn around each stroke encloses long, narrow
            # holes, where a digit's own loops are round. Fill those first: the digit is the
            # outline's inside (thickening would turn the outlines into one blob).
            filled = strokes.fill_tubes(core)
            if filled is not None:
                fine = np.maximum(fine, filled.astype(np.float32))
                grow = _growth(fine > 0.5)
        if grow > 0:
            # A thin pen photographed large would shrink below a pixel: draw it with MNIST's pen.
            yy, xx = np.mgrid[-grow : grow + 1, -grow : grow + 1]
            fine = ndimage.grey_dilation(np.pad(fine, grow), footprint=yy**2 + xx**2 <= grow**2)
            fine = fine[_span(fine.any(axis=1)), _span(fine.any(axis=0))]
    return resize_long(fine, BOX, Image.Resampling.BOX)


def _span(occupied: np.ndarray) -> slice:
    """The slice from the first to the last True of a 1-D mask (which has one)."""
    where = np.flatnonzero(occupied)
    return slice(int(where[0]), int(where[-1]) + 1)


def _growth(core: np.ndarray) -> int:
    """How many fine pixels to grow a stroke of mask ``core`` by (0 for strokes wide enough)."""
    width = 4.0 * float(ndimage.distance_transform_edt(core)[core].mean()) - 2.0
    return min(round((_STROKE * _FINE - width) / 2), 2 * _FINE) if width < _THIN * _FINE else 0


def resize_long(arr: np.ndarray, long_side: int, resample: Image.Resampling) -> np.ndarray:
    """A float32 copy of ``arr`` resized so that its longer side is ``long_side``."""
    height, width = arr.shape
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(arr.astype(np.float32, copy=False)).resize(size, resample))


def centre(digit: np.ndarray) -> np.ndarray:
    """Place a digit (at most BOX px a side, any positive scale) on SIDE x SIDE, as MNIST: its
    brightest pixel 255 and its centre of mass at (14, 14), clamped so that no ink is cut off."""
    top = float(digit.max())
    if top <= 0.0:
        raise NoInkError("No ink was found in the image.")
    digit = digit * (255.0 / top)
    height, width = digit.shape
    # Summed as scipy's center_of_mass sums (the total in float32): a centre at exactly x.5
    # then rounds the way the model's training data was centred.
    total = digit.sum()
    cy = float((digit * np.arange(height, dtype=np.float64)[:, None]).sum() / total)
    cx = float((digit * np.arange(width, dtype=np.float64)[None, :]).sum() / total)
    oy = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - height))
    ox = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - width))
    out = np.zeros((SIDE, SIDE), dtype=np.uint8)
    out[oy : oy + height, ox : ox + width] = np.clip(np.rint(digit), 0, 255)
    return out
