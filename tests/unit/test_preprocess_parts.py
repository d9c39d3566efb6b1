"""The preprocess stage's fast building blocks (issue 14) give what the slower library calls they
replace give: the model was trained on the outputs of those calls, so "nearly" is not enough."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from preprocess_worker import components, decoding, levels, shaping, steps


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 97, 1000])
@pytest.mark.parametrize("q", [90, 98])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_percentile_is_numpys(n: int, q: float, dtype: type) -> None:
    rng = np.random.default_rng(n)
    values: np.ndarray = (rng.random(n) * 255).astype(dtype)
    assert components.percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (40, 33)])
def test_grow_is_a_5x5_maximum_filter(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    for share in (0.02, 0.2):
        mask = rng.random(shape) < share
        assert np.array_equal(steps._grow(mask, 2), ndimage.maximum_filter(mask, size=5))


def test_centre_places_as_scipy_centre_of_mass() -> None:
    rng = np.random.default_rng(5)
    tie = np.zeros((20, 20), np.float32)
    tie[:, 9:11] = 1.0  # centre of mass exactly 9.5 across: the rounding tie
    for digit in [tie, *(rng.random((20, w)).astype(np.float32) for w in (6, 13, 20))]:
        cy, cx = ndimage.center_of_mass(digit * np.float32(255.0 / digit.max()))
        oy, ox = (
            int(np.clip(round(14 - cy), 0, 28 - digit.shape[0])),
            int(np.clip(round(14 - cx), 0, 28 - digit.shape[1])),
        )
        out = shaping.centre(digit)
        assert out.max() == 255
        assert np.array_equal(np.flatnonzero(out.any(axis=1))[[0, -1]], oy + np.flatnonzero(digit.any(axis=1))[[0, -1]])
        assert np.array_equal(np.flatnonzero(out.any(axis=0))[[0, -1]], ox + np.flatnonzero(digit.any(axis=0))[[0, -1]])


def test_histogram_quantiles_are_those_of_the_values() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    assert np.array_equal(levels.histogram(frame), np.bincount(frame.ravel(), minlength=256))
    expected = [np.sort(frame.ravel())[int(q * (frame.size - 1))] for q in (0.02, 0.5, 0.9)]
    assert list(levels.hist_quantiles(levels.histogram(frame), (0.02, 0.5, 0.9))) == pytest.approx(expected, abs=1)


@pytest.mark.parametrize("specks", [3, 40])
def test_keep_digit_drops_specks_however_many(specks: int) -> None:
    """Few components are counted in their boxes, many in one pass: the same digit either way."""
    clean = np.zeros((200, 200), np.float32)
    clean[60:140, 90:100] = 200.0  # a "1"
    rng = np.random.default_rng(specks)
    for y, x in rng.integers(0, 196, (specks, 2)):
        if not (50 < y < 150 and 80 < x < 110):
            clean[y : y + 2, x : x + 2] = 200.0  # 4 px: under the speck size
    expected = np.zeros((200, 200), bool)
    expected[60:140, 90:100] = True
    labels, keep, box = components.keep_digit(clean, 100.0)
    assert box == (60, 140, 90, 100)
    assert np.array_equal(keep[labels], expected)


def test_transparent_canvas_ink_is_the_shrunk_rgba_alpha() -> None:
    """The alpha channel shrunk alone equals the alpha of the whole RGBA image shrunk (which
    Pillow resizes premultiplied): the canvas fast path reads the same ink."""
    rng = np.random.default_rng(3)
    rgba = np.zeros((333, 301, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 120, 3)
    rgba[80:250, 100:140, 3] = rng.integers(100, 256, (170, 40))
    buf = BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    ink = decoding.decode_array(buf.getvalue(), 10_000_000)
    whole = Image.fromarray(rgba, "RGBA").resize(ink.shape[::-1], Image.Resampling.BOX)
    assert ink.shape == (decoding.WORK_SIZE, round(301 * decoding.WORK_SIZE / 333))
    assert np.array_equal(ink, np.asarray(whole)[..., 3])
