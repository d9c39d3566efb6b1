"""Which connected ink components of a flattened frame are the digit (used by
`preprocess_worker.steps.normalize`): specks, page edges, ruled lines and faint shadow remnants
are dropped, the most massive strong component and the big strong ones near it kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from digitflow.errors import NoInkError

_EIGHT = np.ones((3, 3), dtype=bool)  # diagonal neighbours connect: a thin slanted stroke stays one
_COUNT_IN_BOXES = 24  # up to this many candidate components, areas are counted box by box
_FAINT_REACH = 0.6  # faint marks are joined to the digit within this share of its long side
_MARGIN_MIN = 4  # px of surroundings at least: more than the caller's margin around the box


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) from a partial sort: the same number at a
    fraction of numpy's per-call cost, which dominated for the many small components."""
    n = values.size
    share = q / 100
    virtual = n * share + (1 + share * -1) - 1  # numpy's formula for the linear method's index
    below = min(max(int(np.floor(virtual)), 0), n - 1)
    above = min(below + 1, n - 1)
    part = np.partition(values.ravel(), (below, above)) if n > 1 else values.ravel()
    a, b = float(part[below]), float(part[above])
    t = min(max(virtual - below, 0.0), 1.0)
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def keep_digit(clean: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Keep the most massive strong component and the big strong ones near it; drop specks, page
    edges and faint blobs (shadow remnants). Returns the component labels, which labels are kept
    (a lookup table: ``keep[labels]`` is the mask) and the kept box (y0, y1, x0, x1); the caller
    builds only the part of the mask it needs.

    Raises NoInkError when no component is big and clear enough to be a mark.
    """
    height, width = clean.shape
    labels, count = ndimage.label(clean > threshold, structure=_EIGHT)
    speck = max(8.0, 3e-4 * height * width)
    slices = ndimage.find_objects(labels)
    # A component's area is at most its box's: small boxes are specks without counting them.
    # Few candidates (the usual photo) are counted in their boxes, many in one pass.
    spans = [(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in slices]
    candidates = [i for i, (y0, y1, x0, x1) in enumerate(spans) if (y1 - y0) * (x1 - x0) >= speck]
    if len(candidates) > _COUNT_IN_BOXES:
        counted = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    areas: dict[int, int] = {}
    boxes, mass, peak = {}, {}, {}
    for i in candidates:
        own = labels[slices[i]] == i + 1
        area = int(counted[i]) if len(candidates) > _COUNT_IN_BOXES else int(np.count_nonzero(own))
        if area < speck:
            continue
        values = clean[slices[i]][own]
        areas[i], boxes[i] = area, spans[i]
        mass[i], peak[i] = float(values.sum(dtype=np.float64)), percentile(values, 90)
    sized = list(areas)
    if not sized:
        raise NoInkError("No ink was found in the image.")
    kind = {i: border_kind(boxes[i], areas[i], height, width) for i in sized}
    sized = [i for i in sized if kind[i] != "strip"]
    if not sized:
        raise NoInkError("No ink was found in the image, only the page's edges.")
    lines = [i for i in sized if kind[i] == "line"]
    inner = [i for i in sized if kind[i] is None]
    # Ruled lines and page edges go, unless they are all there is (a lone "1" cropped tight).
    if not inner or (lines and max(mass[i] for i in inner) < 0.2 * max(mass[i] for i in lines)):
        inner = sized
    # Ink is the strongest thing on the page; what is much fainter is shadow or smudge.
    level = max(peak[i] for i in inner)
    strong = [i for i in inner if peak[i] >= 0.5 * level]
    best = max(strong, key=lambda i: mass[i])
    y0, y1, x0, x1 = box = boxes[best]
    # A mark is more than a speck, and its core stands well clear of the threshold (noise and
    # shading artefacts barely cross it).
    if max(y1 - y0, x1 - x0) < max(5.0, 0.03 * max(height, width)) or areas[best] < 2 * speck:
        raise NoInkError("No ink was found in the image, only specks.")
    if peak[best] < 1.4 * threshold:
        raise NoInkError("No ink was found in the image, only faint shading.")
    kept, reach = {best}, 0.4 * max(y1 - y0, x1 - x0)
    grew = True
    while grew:
        grew = False
        for i in strong:
            gap = _gap(box, boxes[i])
            if i not in kept and (gap == 0 or (areas[i] >= 0.08 * areas[best] and gap <= reach)):
                kept.add(i)
                b = boxes[i]
                box = (min(box[0], b[0]), max(box[1], b[1]), min(box[2], b[2]), max(box[3], b[3]))
                grew = True
    keep = np.zeros(count + 1, dtype=bool)
    keep[[i + 1 for i in kept]] = True
    return labels, keep, box


def border_kind(box: tuple[int, int, int, int], area: float, height: int, width: int) -> str | None:
    """Classify a component by its box: a "strip" hugging one side of the frame (the table past
    the page, a rotated scan's wedge), a thin "line" running across the frame (ruled paper, the
    page's edge) or None."""
    y0, y1, x0, x1 = box
    bh, bw = y1 - y0, x1 - x0
    my, mx = max(2, 0.02 * height), max(2, 0.02 * width)
    left, right, top, bottom = x0 <= mx, x1 >= width - mx, y0 <= my, y1 >= height - my
    # Inside a band along one side: the band is thin (6%), or it is 12% and the part long.
    for near, depth, side, length, along in (
        (left, x1, width, bh, height),
        (right, width - x0, width, bh, height),
        (top, y1, height, bw, width),
        (bottom, height - y0, height, bw, width),
    ):
        if near and (depth <= 0.06 * side or (depth <= 0.12 * side and length >= max(0.3 * along, 3 * depth))):
            return "strip"
    spans = bw >= 0.8 * width or bh >= 0.8 * height
    thin = min(bh / height, bw / width) < 0.06 or area / (bh * bw) < 0.15
    return "line" if (left or right or top or bottom) and spans and thin else None


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    return max(0, b[0] - a[1], a[0] - b[1], b[2] - a[3], a[2] - b[3])


def join_faint(
    clean: np.ndarray, labels: np.ndarray, keep: np.ndarray, box: tuple[int, int, int, int], low: float
) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Hysteresis: the kept digit plus the marks over ``low`` that touch it, near its box.

    A calligraphic pen's hairlines, blurred by the camera, fade under the ink threshold while the
    thick parts of the same strokes clear it: thresholding alone keeps a 0 as "(" and a 6 as a
    bare arc. Marks over ``low`` joined to the digit are its own strokes; ruled lines and shadows
    that touch it are cut at its surroundings (``_FAINT_REACH`` of its long side), which is all
    that is labelled again. Returns the surroundings' origin (y, x), the kept digit's mask there
    and the joined mask there.
    """
    y0, y1, x0, x1 = box
    height, width = clean.shape
    pad = max(_MARGIN_MIN, round(_FAINT_REACH * max(y1 - y0, x1 - x0)))
    ry0, ry1, rx0, rx1 = max(y0 - pad, 0), min(y1 + pad, height), max(x0 - pad, 0), min(x1 + pad, width)
    strong = keep[labels[ry0:ry1, rx0:rx1]]
    faint, count = ndimage.label(clean[ry0:ry1, rx0:rx1] > low, structure=_EIGHT)
    touching = np.zeros(count + 1, dtype=bool)
    touching[faint[strong]] = True
    touching[0] = False
    return (ry0, rx0), strong, touching[faint] | strong
