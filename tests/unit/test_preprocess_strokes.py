"""normalize on the uploads that MNIST-style preprocessing used to destroy (issue 15): a soft, wide
stroke of a low-resolution scan blown up, an outlined ("hollow") stroke; and the pages that must
still be refused. The helpers live in preprocess_worker/strokes.py."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from digitflow.errors import NoInkError
from preprocess_worker import components, strokes
from preprocess_worker.steps import normalize, preprocess

MAX_PIXELS = 40_000_000
# A 9 from scikit-learn's optdigits (8x8 cells, 0..16): another writer, scanned at low resolution.
NINE = np.array(
    [
        [0, 0, 3, 14, 10, 3, 0, 0],
        [0, 0, 10, 14, 13, 15, 1, 0],
        [0, 0, 12, 4, 4, 16, 4, 0],
        [0, 0, 6, 15, 15, 16, 8, 0],
        [0, 0, 1, 8, 8, 14, 8, 0],
        [0, 0, 2, 0, 0, 9, 11, 0],
        [0, 0, 16, 10, 8, 12, 12, 0],
        [0, 0, 7, 12, 14, 14, 6, 0],
    ],
    np.float32,
)


def png(grey: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def run(data: bytes) -> np.ndarray:
    return np.frombuffer(preprocess(data, MAX_PIXELS), np.uint8).reshape(28, 28)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def lowres_scan(cells: np.ndarray, side: int, noise: float, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """(the upload: dark ink on grey paper, cropped tight; its ink coverage 0..1)."""
    up = np.asarray(Image.fromarray(cells / 16.0).resize((side, side), Image.Resampling.BICUBIC)).clip(0, 1)
    grey = 225 * (1 - up) + 40 * up + np.random.default_rng(seed).normal(0, noise, up.shape)
    return png(grey), up


@pytest.mark.parametrize(("side", "noise"), [(64, 0.0), (128, 0.0), (128, 3.0), (256, 2.0)])
def test_a_soft_wide_low_res_stroke_stays_one_digit(side: int, noise: float) -> None:
    data, coverage = lowres_scan(NINE, side, noise)
    out = run(data)
    # The flattening used to take the wide strokes for background and leave crests in pieces.
    assert ndimage.label(out > 64, structure=np.ones((3, 3)))[1] == 1
    assert (out > 64).mean() > 0.15  # the stroke's width survives, not only its crest
    assert pearson(out, normalize(Image.fromarray((255 * coverage).astype(np.uint8)))) > 0.85


def outlined(points: list[tuple[int, int]], size: int = 320, width: int = 40, line: int = 5) -> tuple[bytes, bytes]:
    """(an outlined stroke along ``points`` as a photo-like page, the same stroke filled in)."""
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).line(points, fill=255, width=width, joint="curve")
    filled = np.asarray(img) > 0
    ring = filled & ~ndimage.binary_erosion(filled, iterations=line)
    return png(235 - 200 * ring.astype(np.float32)), png(235 - 200 * filled.astype(np.float32))


def test_a_hollow_stroke_is_filled() -> None:
    hollow, solid = outlined([(70, 60), (250, 60), (140, 280)])  # an outlined 7
    out, expected = run(hollow), run(solid)
    # Thickening the outline used to merge its two sides into one blob with a dark seam or a
    # wider, shorter digit; filled, it is the solid stroke.
    assert pearson(out, expected) > 0.9
    assert abs((out > 64).mean() - (expected > 64).mean()) < 0.05


def test_the_loop_of_a_thin_zero_is_not_filled() -> None:
    img = Image.new("L", (320, 320), 235)
    ImageDraw.Draw(img).ellipse([90, 40, 230, 280], outline=30, width=6)
    out = run(png(np.asarray(img, np.float32)))
    assert out[12:16, 12:16].max() == 0  # the hole of the 0 stays open


def test_fill_tubes_keeps_round_holes_and_fills_long_narrow_ones() -> None:
    ring = np.zeros((80, 80), bool)
    ring[10:70, 10:70] = True
    ring[25:55, 25:55] = False  # a round (square) hole: a loop
    assert strokes.fill_tubes(ring) is None
    tube = np.zeros((80, 80), bool)
    tube[5:75, 30:42] = True
    tube[8:72, 33:39] = False  # a long 6 px wide hole: the inside of an outlined stroke
    filled = strokes.fill_tubes(tube)
    assert filled is not None and filled[8:72, 33:39].all() and not filled[:, :28].any()


def _speckle(seed: int, share: float) -> bytes:
    rng = np.random.default_rng(seed)
    return png(np.where(rng.random((160, 160)) < share, 20.0, 240.0))


def _texture(kind: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:240].astype(np.float32)
    if kind == "fabric":
        page = 160 + 30 * np.sin(xx / 5) * np.sin(yy / 5) + rng.normal(0, 8, xx.shape)
    else:  # strong white noise
        page = rng.normal(140, 40, xx.shape)
    return png(page)


REFUSED = {
    "blank grey page": png(np.full((200, 200), 205.0) + np.random.default_rng(1).normal(0, 2, (200, 200))),
    "speckle 10%": _speckle(0, 0.1),
    "speckle 3%": _speckle(1, 0.03),
    "fabric": _texture("fabric"),
    "strong noise": _texture("noise"),
}


@pytest.mark.parametrize("data", list(REFUSED.values()), ids=list(REFUSED))
def test_blank_and_noisy_pages_are_still_refused(data: bytes) -> None:
    with pytest.raises(NoInkError):
        preprocess(data, MAX_PIXELS)


def test_coherence_tells_strokes_from_speckle() -> None:
    rng = np.random.default_rng(0)
    speckle = rng.random((100, 100)) < 0.5
    stroke = np.zeros((100, 100), bool)
    stroke[20:80, 40:56] = True
    assert strokes._coherence(speckle) < 0.6 < strokes._COHERENT < strokes._coherence(stroke)


def calligraphic_zero(hairline: float) -> bytes:
    """A photographed 0 of a calligraphic pen: a thick dark left arc, a hairline right arc whose
    ink, blurred by the camera, is ``hairline`` of the thick arc's contrast."""
    img = Image.new("L", (240, 240), 0)
    draw = ImageDraw.Draw(img)
    draw.arc((80, 40, 160, 200), 90, 270, fill=255, width=9)
    draw.arc((80, 40, 160, 200), 270, 90, fill=round(255 * hairline), width=2)
    ink = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), np.float32) / 255
    return png(225 - 200 * ink + np.random.default_rng(0).normal(0, 2, ink.shape))


def test_a_calligraphic_hairline_stays_part_of_the_digit() -> None:
    """The hairline falls under the ink threshold (the thick arc sets it), yet it touches the
    digit: hysteresis keeps both halves of the 0."""
    out = np.frombuffer(preprocess(calligraphic_zero(0.6), MAX_PIXELS), np.uint8).reshape(28, 28)
    cols = np.flatnonzero(out.max(axis=0) > 48)
    assert cols[-1] - cols[0] >= 8  # both arcs: a 0 about half as wide as tall, not a "("
    right = out[:, (cols[0] + cols[-1]) // 2 + 1 :]
    assert 64 < right.max() < 255  # the hairline, fainter than the thick arc but there
    assert (right.max(axis=1) > 32).sum() >= 15  # along the 0's height (20 rows), not a fragment


def test_join_faint_adds_what_touches_the_digit_and_cuts_lines_at_its_surroundings() -> None:
    clean = np.zeros((200, 300), np.float32)
    clean[100, :] = 40.0  # a faint ruled line through the digit, across the whole frame
    clean[50:150, 100:110] = 200.0  # the digit's strong stroke
    clean[50:52, 110:140] = 40.0  # a faint hairline leaving it
    clean[10:20, 250:260] = 40.0  # a faint mark far away, touching nothing
    labels, count = ndimage.label(clean > 100.0)
    keep = np.zeros(count + 1, bool)
    keep[1:] = True
    (ry, rx), strong, joined = components.join_faint(clean, labels, keep, (50, 150, 100, 110), 20.0)
    full = np.zeros(clean.shape, bool)
    full[ry : ry + joined.shape[0], rx : rx + joined.shape[1]] = joined
    assert full[50:52, 110:140].all() and full[50:150, 100:110].all()
    assert not full[10:20, 250:260].any()
    assert full[100].sum() == 60 + 10 + 60  # 60 px (0.6 of the digit's height) either side, no more
    assert strong.sum() == 1000
