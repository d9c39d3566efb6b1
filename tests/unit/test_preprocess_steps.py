"""preprocess_worker.steps: uploads of every kind become MNIST-like 28x28 digits, or a clear error."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from digitflow.errors import DigitflowError, InvalidImageError, NoInkError
from digitflow.images import inspect_image
from digitflow.reference import INPUT_STATS
from digitflow.reference import ink_stats as ink_tuple
from preprocess_worker.steps import decode, normalize, preprocess
from tests import imagegen
from tests.model_dirs import MNIST_NPZ

MAX_PIXELS = 40_000_000
MNIST = MNIST_NPZ


def ink_stats(pixels: np.ndarray) -> dict[str, float]:
    return dict(zip(INPUT_STATS, ink_tuple(np.asarray(pixels, np.uint8)), strict=True))


def _digits() -> list[tuple[str, np.ndarray]]:
    """Held-out MNIST digits when the data file is there, else digits drawn with strokes."""
    if MNIST.exists():
        with np.load(MNIST, allow_pickle=False) as data:
            held = data["heldout_idx"]
            labels = data["labels"][held]
            return [(f"mnist-{d}", data["images"][held[labels == d][0]]) for d in (0, 1, 4, 7)]
    return [(f"drawn-{c}", imagegen.stroke_digit(c)) for c in "0147"]


DIGITS = _digits()
DIGIT_IDS = [name for name, _ in DIGITS]


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def run(data: bytes) -> np.ndarray:
    out = preprocess(data, MAX_PIXELS)
    assert isinstance(out, bytes) and len(out) == 784
    return np.frombuffer(out, dtype=np.uint8).reshape(28, 28)


def reference(digit: np.ndarray) -> np.ndarray:
    return normalize(Image.fromarray(digit))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def assert_mnist_like(out: np.ndarray) -> None:
    """Polarity, placement and size as MNIST: bright ink on black, centred by mass, 20 px box."""
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert out.max() == 255 and out.mean() < 100 and np.percentile(out, 50) == 0
    assert out[:3].max() == 0 or out[-3:].max() == 0  # one digit's height of 20 px fits in 28
    cy, cx = ndimage.center_of_mass(out.astype(np.float64))
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    ys, xs = np.nonzero(out)
    assert max(np.ptp(ys), np.ptp(xs)) + 1 == 20
    ys, xs = np.nonzero(out > 64)
    assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 17


def with_mode(mode: str, fmt: str = "PNG", **params: object) -> Callable[[np.ndarray], bytes]:
    """An encoder of dark-on-white digits in a given Pillow mode and format."""

    def make(digit: np.ndarray) -> bytes:
        page = Image.fromarray(255 - digit).resize((140, 140), Image.Resampling.BICUBIC)
        return encode(page.convert(mode), fmt, **params)

    return make


def rgba_white_page(digit: np.ndarray) -> bytes:
    """A canvas exported with an opaque white background: alpha is all 255."""
    page = Image.fromarray(255 - digit).resize((200, 200), Image.Resampling.BICUBIC).convert("RGBA")
    return encode(page, "PNG")


def mpo(digit: np.ndarray) -> bytes:
    page = Image.fromarray(255 - digit).resize((160, 160), Image.Resampling.BICUBIC).convert("RGB")
    return encode(page, "MPO", save_all=True, append_images=[page.rotate(90)])


GENERATORS: dict[str, Callable[[np.ndarray], bytes]] = {
    "phone photo": imagegen.phone_photo,
    "phone photo, heavy shadow": lambda d: imagegen.phone_photo(d, seed=3, shadow=0.5),
    "1200x1600 photo": imagegen.big_photo,
    "canvas, black on transparent": imagegen.canvas_export,
    "canvas, blue on transparent": lambda d: imagegen.canvas_export(d, colour=(20, 60, 200)),
    "canvas, white on transparent": lambda d: imagegen.canvas_export(d, colour=(255, 255, 255)),
    "canvas, white background": rgba_white_page,
    "16-bit scan": imagegen.scan_16bit,
    "16-bit scan, underexposed": lambda d: imagegen.scan_16bit(d, white=3000.0),
    "cmyk jpeg": imagegen.cmyk_jpeg,
    "exif rotated jpeg": imagegen.with_exif_rotation,
    "thin pen": imagegen.thin_pen,
    "mnist as png": imagegen.white_on_black,
    "gif with transparency": imagegen.paletted_gif,
    "cluttered page": imagegen.cluttered_page,
    "1-bit png": with_mode("1"),
    "LA png": with_mode("LA"),
    "palette bmp": with_mode("P", "BMP"),
    "webp": with_mode("RGB", "WEBP", quality=75),
    "progressive jpeg": with_mode("RGB", "JPEG", progressive=True, quality=70),
    "mpo": mpo,
}


@pytest.mark.parametrize("digit", [d for _, d in DIGITS], ids=DIGIT_IDS)
@pytest.mark.parametrize("make", list(GENERATORS.values()), ids=list(GENERATORS))
def test_uploads_become_the_digit_mnist_style(make: Callable[[np.ndarray], bytes], digit: np.ndarray) -> None:
    out = run(make(digit))
    assert_mnist_like(out)
    assert pearson(out, reference(digit)) > 0.6


@pytest.mark.parametrize("digit", [d for _, d in DIGITS], ids=DIGIT_IDS)
def test_normalize_keeps_mnist_digits_mnist_like(digit: np.ndarray) -> None:
    out = reference(digit)
    assert_mnist_like(out)
    assert pearson(out, digit) > 0.8


def test_exif_orientation_makes_the_photo_upright() -> None:
    digit = imagegen.stroke_digit("7")
    out, ref = run(imagegen.with_exif_rotation(digit)), reference(digit)
    upright = pearson(out, ref)
    assert upright > 0.6
    assert upright > max(pearson(out, np.rot90(ref, k)) for k in (1, 2, 3)) + 0.3


def test_thin_pen_is_thickened_to_mnist_strokes() -> None:
    digit = imagegen.stroke_digit("4")
    out, ref = run(imagegen.thin_pen(digit)), reference(digit)
    # A 3 px line at 400 px would be under half a pixel at 20 px: thickened, it carries about
    # as much ink as the reference's strokes.
    assert ink_stats(out)["ink_ratio"] > 0.6 * ink_stats(ref)["ink_ratio"]


def test_a_one_stays_thin() -> None:
    digit = imagegen.stroke_digit("1")
    stats = ink_stats(run(imagegen.phone_photo(digit)))
    assert 0.1 < stats["aspect"] < 0.5
    assert abs(stats["aspect"] - ink_stats(reference(digit))["aspect"]) < 0.15


def test_the_detached_bar_of_a_five_is_kept() -> None:
    digit = imagegen.stroke_digit("5")
    assert ndimage.label(digit > 64)[1] == 2  # the bar does not touch the body
    out = run(imagegen.phone_photo(digit))
    top = int(np.nonzero((out > 128).any(axis=1))[0][0])
    top_rows = out[top : top + 3] > 128
    assert top_rows.any(axis=0).sum() >= 6  # the bar, wide, at the top of the digit
    assert pearson(out, reference(digit)) > 0.7


NO_INK = {
    "photo of a blank page": imagegen.photo_of_blank_page(),
    "blank page, another light": imagegen.photo_of_blank_page(seed=5),
    "blank 1200x1600 photo": imagegen.big_photo(np.zeros((28, 28), np.uint8)),
    "black": imagegen.uniform(0),
    "grey": imagegen.uniform(128),
    "white": imagegen.uniform(255, size=300),
    "light noise": imagegen.light_noise(),
    "stronger noise": imagegen.light_noise(sigma=20, seed=1),
    "transparent canvas": encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), "PNG"),
    "white canvas": encode(Image.new("RGBA", (280, 280), (255, 255, 255, 255)), "PNG"),
    "a few specks": imagegen.specks(),
    "gradient": encode(Image.linear_gradient("L").resize((300, 200)), "JPEG"),
    "one pixel": encode(Image.new("L", (1, 1)), "PNG"),
}


@pytest.mark.parametrize("data", list(NO_INK.values()), ids=list(NO_INK))
def test_no_ink_is_reported(data: bytes) -> None:
    with pytest.raises(NoInkError) as info:
        preprocess(data, MAX_PIXELS)
    assert info.value.code == "no_ink" and info.value.status == 422


def test_corrupt_pixel_data_found_while_decoding_is_invalid_image() -> None:
    data = bytearray(encode(Image.effect_noise((64, 64), 60), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 100 : start + 140] = bytes(40)  # the structure holds; the stream does not
    inspect_image(bytes(data), MAX_PIXELS)
    with pytest.raises(InvalidImageError) as info:
        preprocess(bytes(data), MAX_PIXELS)
    assert type(info.value) is InvalidImageError


def test_decode_returns_a_small_ink_map_with_bright_ink() -> None:
    digit = DIGITS[0][1]
    ink = decode(imagegen.big_photo(digit), MAX_PIXELS, work_size=200)
    assert ink.mode == "L" and max(ink.size) <= 200 and ink.size[0] < ink.size[1]
    arr = np.asarray(ink)
    assert np.median(arr) < 64 and np.percentile(arr, 99.5) > 150


def test_ink_stats() -> None:
    pixels = np.zeros((28, 28), np.uint8)
    pixels[4:14, 10:14] = 255
    pixels[20, 20] = 50  # faint: not ink
    stats = ink_stats(pixels.ravel())
    assert stats["ink_ratio"] == pytest.approx(40 / 784)
    assert stats["mean_intensity"] == pytest.approx((40 * 255 + 50) / 784 / 255)
    assert stats["aspect"] == pytest.approx(0.4)
    assert ink_stats(np.zeros((28, 28), np.uint8)) == {"ink_ratio": 0.0, "mean_intensity": 0.0, "aspect": 0.0}


def _valid_uploads() -> list[bytes]:
    digit = DIGITS[-1][1]
    return [
        imagegen.phone_photo(digit, size=120),
        imagegen.canvas_export(digit, size=100),
        imagegen.scan_16bit(digit, size=80),
        imagegen.cmyk_jpeg(digit, size=80),
        imagegen.paletted_gif(digit, size=80),
        with_mode("RGB", "WEBP")(digit),
        with_mode("1", "BMP")(digit),
    ]


VALID = _valid_uploads()
FUZZ = settings(
    max_examples=100, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _only_digitflow_errors(data: bytes) -> None:
    try:
        out = preprocess(data, MAX_PIXELS)
    except DigitflowError:
        return
    assert len(out) == 784


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_digitflow_errors(data: bytes) -> None:
    _only_digitflow_errors(data)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.floats(0.05, 1),
)
def test_mutated_uploads_raise_only_digitflow_errors(base: bytes, edits: list[tuple[float, int]], keep: float) -> None:
    data = bytearray(base)
    for where, value in edits:
        data[int(where * (len(data) - 1))] = value
    _only_digitflow_errors(bytes(data[: max(1, int(len(data) * keep))]))
