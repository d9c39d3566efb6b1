"""The fashion-mnist input profile: a product photo comes back as Fashion-MNIST made it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitflow.errors import InvalidImageError, NoInkError
from preprocess_worker.steps_fashion import fit, preprocess_fashion
from training_worker.datasets import FASHION_DIR, read_idx

MAX_PIXELS = 40_000_000


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).convert(mode).save(out, fmt)
    return out.getvalue()


def product(side: int = 28) -> np.ndarray:
    """A light, textured 'shirt' on black, like a Fashion-MNIST image."""
    arr = np.zeros((side, side), np.float32)
    yy, xx = np.mgrid[0:side, 0:side] / side
    body = (np.abs(xx - 0.5) < 0.3) & (yy > 0.15) & (yy < 0.95)
    arms = (np.abs(yy - 0.3) < 0.12) & (np.abs(xx - 0.5) < 0.45)
    arr[body | arms] = 160 + 60 * np.sin(12 * xx[body | arms])
    return arr


def as_photo(arr: np.ndarray, scale: int = 8) -> np.ndarray:
    """The product photographed on white: dark-on-light and much larger."""
    big = Image.fromarray(arr.astype(np.uint8)).resize(
        (arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.BICUBIC
    )
    return 255.0 - np.asarray(big, dtype=np.float32)


def test_a_photo_on_white_comes_back_light_on_dark_and_fitted() -> None:
    original = product()
    out = np.frombuffer(preprocess_fashion(encode(as_photo(original)), MAX_PIXELS), np.uint8).reshape(28, 28)
    assert np.abs(out.astype(np.float32) - original).mean() < 12.0
    assert out[0].max() < 30 and out[:, 0].max() < 30  # background dark, as in Fashion-MNIST


def test_a_dark_background_is_not_inverted_and_jpeg_rgb_works() -> None:
    original = product()
    big = np.asarray(Image.fromarray(original.astype(np.uint8)).resize((224, 224)), dtype=np.float32)
    out = np.frombuffer(preprocess_fashion(encode(big, "JPEG", "RGB"), MAX_PIXELS), np.uint8).reshape(28, 28)
    assert np.abs(out.astype(np.float32) - original).mean() < 15.0


def test_the_whole_picture_is_fitted_keeping_its_aspect_ratio() -> None:
    wide = np.full((50, 100), 200.0)
    out = fit(wide)
    rows = np.nonzero(out.max(axis=1))[0]
    assert out[:, 0].max() > 0 and rows.min() == 7 and rows.max() == 20  # 28 wide, 14 high, centred


def test_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((120, 120, 4), np.uint8)
    rgba[20:100, 30:90] = (90, 90, 90, 255)  # an opaque grey bag on a transparent canvas
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    pixels = np.frombuffer(preprocess_fashion(out.getvalue(), MAX_PIXELS), np.uint8).reshape(28, 28)
    assert pixels[14, 14] > 120 and pixels[0, 0] < 10


def test_blank_and_corrupt_pictures_are_refused() -> None:
    with pytest.raises(NoInkError):
        preprocess_fashion(encode(np.full((64, 64), 240.0)), MAX_PIXELS)
    with pytest.raises(InvalidImageError):
        preprocess_fashion(encode(product())[:60], MAX_PIXELS)


def test_real_fashion_mnist_test_images_survive_the_round_trip() -> None:
    path = Path(FASHION_DIR) / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (make system-deps)")
    images = read_idx(path)[:20]
    errors = [
        np.abs(
            np.frombuffer(preprocess_fashion(encode(as_photo(im, 6)), MAX_PIXELS), np.uint8)
            - im.ravel().astype(np.float32)
        ).mean()
        for im in images
    ]
    assert np.median(errors) < 15.0, errors
