"""Render a glyph (a coverage mask) the way users' uploads are made: a phone photo of ink on paper,
a browser-canvas export, a low-resolution scan blown up. Deterministic for a given numpy Generator.

Used by bench/population_suites.py (the evaluation populations) and bench/make_regression_suites.py
(the retrain gate's regression populations); never imported by a service.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

_fonts: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
PENS = ((20, 20, 25), (25, 35, 110), (60, 60, 60), (120, 30, 30), (90, 90, 95))
GRID_INK = np.array([120, 150, 220], np.float32)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _draw(font: str, ch: str, size: int, stroke: int) -> np.ndarray:
    if (font, size) not in _fonts:
        _fonts[(font, size)] = ImageFont.truetype(font, size)
    img = Image.new("L", (size * 3, size * 3), 0)
    ImageDraw.Draw(img).text(
        (size // 2, size // 2), ch, fill=255, font=_fonts[(font, size)], stroke_width=stroke, stroke_fill=255
    )
    return np.asarray(img, np.float32) / 255.0


def crop(arr: np.ndarray) -> np.ndarray:
    """A coverage mask cropped to its ink (over 0.02); an 8x8 blank when it has none."""
    ys, xs = np.nonzero(arr > 0.02)
    if len(ys) == 0:
        return np.zeros((8, 8), np.float32)
    return arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def glyph(font: str, ch: str, size: int = 160, stroke: int = 0) -> np.ndarray:
    """Coverage 0..1 of one character drawn with a pen grown by ``stroke`` px, cropped to its ink."""
    return crop(_draw(font, ch, size, stroke))


def hollow(font: str, ch: str, size: int, width: int) -> np.ndarray:
    """An outlined ("bubble") character: the ring between the glyph grown by ``width`` and the glyph."""
    outer = _draw(font, ch, size, width)
    inner = ndimage.binary_dilation(_draw(font, ch, size, 0) > 0.5, iterations=max(1, width // 3))
    return crop(np.where(inner, 0.0, outer))


def transform(mask: np.ndarray, rng: np.random.Generator, rot: float = 10.0, shear: float = 0.25) -> np.ndarray:
    """A random rotation (degrees) and slant of a coverage mask (bilinear), cropped again."""
    pad = max(mask.shape) // 2
    padded = np.pad(mask, pad)
    angle, slant = np.deg2rad(rng.uniform(-rot, rot)), rng.uniform(-shear, shear)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    inverse = np.linalg.inv(rotation @ np.array([[1.0, 0.0], [slant, 1.0]]))
    centre = np.array(padded.shape) / 2
    out = ndimage.affine_transform(padded, inverse, offset=centre - inverse @ centre, order=1)
    return crop(out) if (out > 0.02).any() else mask


def resize(arr: np.ndarray, width: int, height: int, mode: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    img = Image.fromarray(arr.astype(np.float32))
    return np.asarray(img.resize((max(1, width), max(1, height)), mode))


def lowfreq(rng: np.random.Generator, height: int, width: int, cells: int, amp: float) -> np.ndarray:
    """Smooth random variation (a cells x cells grid upscaled bicubic), about +-amp."""
    grid = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return resize(grid, width, height, Image.Resampling.BICUBIC) * amp


def _place(
    mask: np.ndarray, height: int, width: int, scale: float, rng: np.random.Generator, margin: int
) -> np.ndarray:
    m = np.clip(resize(mask, round(mask.shape[1] * scale), round(mask.shape[0] * scale)), 0, 1)
    ink = np.zeros((height, width), np.float32)
    y0 = int(rng.integers(margin, max(margin + 1, height - m.shape[0] - margin)))
    x0 = int(rng.integers(margin, max(margin + 1, width - m.shape[1] - margin)))
    hh, ww = min(m.shape[0], height - y0), min(m.shape[1], width - x0)
    ink[y0 : y0 + hh, x0 : x0 + ww] = m[:hh, :ww]
    return ink


def _paper(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    level = rng.uniform(195, 248)
    paper = np.array([level, level - rng.uniform(0, 8), level - rng.uniform(0, 25)], np.float32)
    texture = lowfreq(rng, height, width, 24, rng.uniform(1, 5)) + rng.normal(0, rng.uniform(0.5, 3), (height, width))
    base = paper[None, None, :] + texture[..., None]
    kind = rng.random()
    if kind < 0.25:  # ruled (15%) or squared (10%) paper
        ruled = kind < 0.15
        step = int(rng.integers(18, 40) if ruled else rng.integers(12, 30))
        keep = 0.85 if ruled else 0.88
        for y in range(int(rng.integers(0, step)) if ruled else 0, height, step):
            base[y : y + 1] = base[y : y + 1] * keep + GRID_INK * (1 - keep)
        for x in range(0, width, step) if not ruled else ():
            base[:, x : x + 1] = base[:, x : x + 1] * keep + GRID_INK * (1 - keep)
    return base


def _lighting(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2
    light = 1.0 - rng.uniform(0.0, 0.35) * ramp
    light *= 1.0 - rng.uniform(0, 0.25) * (((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) * 2)  # vignette
    if rng.random() < 0.35:  # a shadow
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        blob = np.exp(-(((yy - cy) / (height * 0.4)) ** 2 + ((xx - cx) / (width * 0.4)) ** 2))
        light *= 1.0 - rng.uniform(0.1, 0.4) * blob
    return light


def photo(mask: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo (JPEG, 200-480 px) of ``mask`` written on paper: texture, tint, ruled or squared
    paper, a lighting gradient, vignette and shadow, pen pressure, blur, a low-res camera, JPEG."""
    width, height = (int(v) for v in rng.integers(200, 481, 2))
    scale = rng.uniform(0.35, 0.8) * min(width, height) / max(mask.shape)
    ink = _place(mask, height, width, scale, rng, int(0.04 * min(height, width)))
    ink *= np.clip(1.0 - np.abs(lowfreq(rng, height, width, 6, rng.uniform(0.0, 0.25))), 0.5, 1.0)  # pressure
    pen = np.array(PENS[int(rng.integers(len(PENS)))], np.float32) + rng.uniform(-10, 10, 3)
    rgb = _paper(rng, height, width) * (1 - ink[..., None]) + pen * ink[..., None]
    tint = np.array([1.0, rng.uniform(0.95, 1.02), rng.uniform(0.85, 1.0)], np.float32)
    rgb = rgb * _lighting(rng, height, width)[..., None] * tint + rng.normal(0, rng.uniform(1, 5), rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.8)) * max(width, height) / 320))
    if rng.random() < 0.3:  # a low-resolution camera, upscaled by the phone
        f = rng.uniform(0.4, 0.7)
        small = img.resize((int(width * f), int(height * f)), Image.Resampling.BILINEAR)
        img = small.resize((width, height), Image.Resampling.BICUBIC)
    return encode(img, "JPEG", quality=int(rng.integers(55, 93)))


def canvas(mask: np.ndarray, rng: np.random.Generator) -> bytes:
    """A canvas export (PNG, 180-420 px): transparent, white or dark-mode, one stroke colour,
    anti-aliased or hard-edged (pixel brushes)."""
    side = int(rng.integers(180, 420))
    ink = _place(mask, side, side, rng.uniform(0.5, 0.92) * side / max(mask.shape), rng, 0)
    if rng.random() < 0.25:
        ink = (ink > 0.5).astype(np.float32)
    colour = np.array([0, 0, 0] if rng.random() < 0.6 else rng.integers(0, 200, 3), np.float32)
    kind = rng.random()
    if kind < 0.55:
        rgba = np.zeros((side, side, 4), np.float32)
        rgba[..., :3], rgba[..., 3] = colour, ink * 255
        return encode(Image.fromarray(np.rint(rgba).astype(np.uint8), "RGBA"), "PNG")
    if kind < 0.8:
        back = np.full(3, 255.0, np.float32)
    else:  # dark mode: a light stroke on a dark background
        back, colour = rng.uniform(0, 50, 3).astype(np.float32), rng.uniform(200, 255, 3).astype(np.float32)
    rgb = back * (1 - ink[..., None]) + colour * ink[..., None]
    return encode(Image.fromarray(np.rint(rgb).astype(np.uint8)), "PNG")


def lowres_scan(cells: np.ndarray, rng: np.random.Generator) -> bytes:
    """An 8x8 optdigits sample (0..16) as a soft scan blown up to 64-256 px: 0-2 cells of margin,
    bilinear or bicubic, dark ink on grey paper, noise, PNG or JPEG q70-95."""
    ink = np.pad(cells.astype(np.float32) / 16.0, [(int(a), int(b)) for a, b in rng.integers(0, 3, (2, 2))])
    scale = int(rng.integers(64, 257)) / max(ink.shape)
    mode = Image.Resampling.BILINEAR if rng.random() < 0.5 else Image.Resampling.BICUBIC
    up = np.clip(resize(ink, round(ink.shape[1] * scale), round(ink.shape[0] * scale), mode), 0, 1)
    paper, pen = rng.uniform(205, 250), rng.uniform(10, 70)
    grey = paper * (1 - up) + pen * up + rng.normal(0, rng.uniform(0.5, 4), up.shape)
    img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    return encode(img, "PNG") if rng.random() < 0.5 else encode(img, "JPEG", quality=int(rng.integers(70, 96)))
