"""Decoding of the preprocess stage: upload bytes -> an 8-bit ink map (ink bright, background
dark), upright per EXIF, small.

Preprocessing is most of the system's CPU, so decoding does as little as it can: JPEGs are
decoded at a reduced DCT scale, everything is shrunk to ``work_size`` before any float math,
a transparent canvas is read from its alpha channel alone, and opaque pictures stay uint8
(inverting a page is exact in integers) with their statistics taken from one histogram.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from digitflow.errors import InvalidImageError
from digitflow.images import inspect_image, pillow_guard
from preprocess_worker.levels import MIN_CONTRAST, hist_quantiles, histogram, quantiles

_ALPHA_SHARE = 0.10  # this share of (nearly) transparent pixels makes the alpha channel the ink
_CUT_OUT = 0.6  # over this share of opaque pixels, the opaque part may be a sheet of paper
_HIGH_DEPTH = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_TRANSPARENT = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_GREY = np.array([0.299, 0.587, 0.114], np.float32)
# The long side every upload is brought down to before the per-pixel steps. 192 px keeps a
# 20 px digit's strokes several pixels wide; against 256 px it costs 0.81-0.84x the CPU per
# photo with the same accuracy per population (docs/performance.md, python -m bench.preprocess_cost).
WORK_SIZE = 192


@contextmanager
def opened_upload(data: bytes, max_pixels: int, work_size: int) -> Iterator[Image.Image]:
    """The upload, checked by :func:`~digitflow.images.inspect_image` (which raises what it
    raises) and decoded; whatever fails inside the block, in the decoder or in the caller's
    image code, is an InvalidImageError (decoders fail on hostile data in many ways; all mean
    "corrupt"). A JPEG is decoded at a reduced scale near ``work_size``."""
    info = inspect_image(data, max_pixels)
    try:
        with pillow_guard(), Image.open(BytesIO(data), formats=[info.format]) as opened:
            if info.format == "JPEG":
                # Let libjpeg decode at 1/2..1/8 scale (and to grey when it can): most of the cost
                # of a phone photo never happens.
                opened.draft("L", (work_size, work_size))
            opened.load()
            yield opened
    except Exception as exc:
        raise InvalidImageError("The image data is corrupt or truncated.", format=info.format) from exc


def decode_array(data: bytes, max_pixels: int, work_size: int = WORK_SIZE) -> np.ndarray:
    """Decode an upload into a uint8 ink map (ink bright, background dark), upright per EXIF,
    at most ``work_size`` pixels on its long side.

    Raises what :func:`~digitflow.images.inspect_image` raises, and InvalidImageError when the
    pixel data turns out corrupt or truncated while decoding.
    """
    with opened_upload(data, max_pixels, work_size) as opened:
        orientation = _orientation(opened)
        # Shrink before turning upright: the EXIF rotation then moves few pixels.
        img = working_mode(opened)
        if img.mode != "RGBA":
            grey = np.asarray(_upright(shrink(img, work_size), orientation))
            return _ink_bright(grey, histogram(grey))
        # A canvas with a transparent background is its alpha channel: shrunk alone, it is
        # the same channel the whole RGBA image's resize gives, at a quarter of the work.
        alpha = np.asarray(_upright(shrink(img.getchannel("A"), work_size), orientation))
        counts = histogram(alpha)
        if counts[:32].sum() > _ALPHA_SHARE * alpha.size and counts[128:].sum() <= _CUT_OUT * alpha.size:
            return alpha
        rgba = np.asarray(_upright(shrink(img, work_size), orientation), dtype=np.float32)
    if counts[:32].sum() > _ALPHA_SHARE * alpha.size:
        return to_uint8(_alpha_ink(rgba))
    opacity = rgba[..., 3:] / 255.0
    gray = (rgba[..., :3] * opacity + 255.0 * (1.0 - opacity)) @ _GREY
    return _ink_bright(gray, histogram(np.clip(gray, 0, 255).astype(np.uint8)))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # broken EXIF only loses the orientation, never the image
        return 1
    return value if isinstance(value, int) else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` turned as EXIF ``orientation`` says: the shrunk copy carries only that tag."""
    if orientation == 1:
        return img
    tag = Image.Exif()
    tag[0x0112] = orientation
    img.info["exif"] = tag.tobytes()
    return ImageOps.exif_transpose(img)


def working_mode(img: Image.Image) -> Image.Image:
    """Return an L image, or RGBA when transparency matters."""
    if img.mode in _HIGH_DEPTH:
        # Scaled by the brightest value, as auto-exposure would: a 16-bit scan using only part
        # of its range still shows its ink. Data already in 0..255 (or 0..1 floats) is kept.
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max())
        scale = 255.0 if img.mode == "F" and 0.0 < top <= 1.0 else 255.0 / top if top > 255 else 1.0
        return Image.fromarray(to_uint8(arr * scale))
    if img.mode in _TRANSPARENT or "transparency" in img.info:
        return img.convert("RGBA")
    if img.mode == "L":
        return img  # shrink or the array copy makes the working copy
    if img.mode in ("RGB", "P", "1"):
        return img.convert("L")
    return img.convert("RGB").convert("L")  # CMYK, YCbCr, LAB, HSV


def shrink(img: Image.Image, work_size: int) -> Image.Image:
    """``img`` scaled down (never up) to at most ``work_size`` px on its long side."""
    width, height = img.size
    scale = work_size / max(width, height)
    if scale >= 1.0:
        return img
    # BOX averages every source pixel once: fast, and thin strokes fade instead of vanishing.
    return img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _ink_bright(gray: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """``gray`` (uint8, or float on 0..255 with ``hist`` of its truncated values) as uint8,
    inverted when its background is light."""
    light = _light_background(gray, hist)
    if gray.dtype == np.uint8:
        return 255 - gray if light else gray
    return to_uint8(255.0 - gray if light else gray)


def _alpha_ink(rgba: np.ndarray) -> np.ndarray:
    """Ink from a transparent-background image: the alpha, weighted by contrast when the opaque
    part looks like a sheet of paper (a cut-out) rather than strokes."""
    alpha = rgba[..., 3]
    opaque = alpha >= 128
    if opaque.mean() <= _CUT_OUT:
        return alpha
    gray = rgba[..., :3] @ _GREY
    contrast = np.abs(gray - np.median(gray[opaque]))
    top = float(np.percentile(contrast[opaque], 99))
    if top < 2 * MIN_CONTRAST:  # one flat colour: a huge stroke, not paper
        return alpha
    return alpha * np.clip(contrast / top, 0.0, 1.0)


def _light_background(gray: np.ndarray, hist: np.ndarray) -> bool:
    """Whether the ink is darker than its background (a page) rather than brighter."""
    low, median, high = hist_quantiles(hist, (0.005, 0.5, 0.995))
    dark, bright = median - low, high - median
    if max(dark, bright) < MIN_CONTRAST:  # under 0.5% of the picture is ink: use the extremes
        dark, bright = median - float(gray.min()), float(gray.max()) - median
    if dark > 2 * bright + 8 or bright > 2 * dark + 8:
        return bool(dark > bright)
    # Ambiguous globally (a shadow over much of a photo): compare against the local background.
    gray = gray.astype(np.float32, copy=False)
    small = Image.fromarray(gray).resize((32, 32), Image.Resampling.BOX)
    coarse = ndimage.median_filter(np.asarray(small), size=9, mode="nearest")
    local = np.asarray(Image.fromarray(coarse).resize(gray.shape[::-1], Image.Resampling.BILINEAR))
    return bool(quantiles(local - gray, (0.995,))[0] > quantiles(gray - local, (0.995,))[0])
