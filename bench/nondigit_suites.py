"""The non-digit populations of `python -m bench.populations` (seeded): letters that do not look
like digits, symbols, drawn shapes, noise, blank and textured pages (photographed or as canvas
exports, bench/upload_render.py), and Fashion-MNIST t10k items as product photos."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from bench import upload_render as ur
from bench.population_suites import HAND_FONTS, F, SourceMissing, Suite, fonts, pen_mask

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
LOOKALIKES = set("OoIlijZzSsBbgqDTt")
SHAPES = (
    "circle",
    "ellipse",
    "square",
    "filled",
    "triangle",
    "star",
    "cross",
    "spiral",
    "scribble",
    "smiley",
    "grid",
    "arrow",
)


def _photo_or_canvas(mask: np.ndarray, rng: np.random.Generator) -> bytes:
    return ur.photo(mask, rng) if rng.random() < 0.6 else ur.canvas(mask, rng)


def letters(seed: int = 606) -> Suite:
    rng = np.random.default_rng(seed)
    chars = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in LOOKALIKES]
    out = [_photo_or_canvas(pen_mask(f, ch, rng), rng) for f in fonts(HAND_FONTS)[::2] for ch in chars]
    return out, [-1] * len(out)


def symbols(seed: int = 707) -> Suite:
    rng = np.random.default_rng(seed)
    chars = "+=*#@&?!$%()[]{}<>~^\u00d7\u00f7\u20ac\u00a3\u00a7\u00b6\u2192\u2605\u263a\u2665"
    out = []
    for font in [*fonts(HAND_FONTS)[::3], f"{F}/truetype/dejavu/DejaVuSans.ttf"]:
        probe = ImageFont.truetype(font, 20)
        for ch in chars:
            if probe.getmask(ch).getbbox() is None:
                continue  # the font has no such glyph
            mask = pen_mask(font, ch, rng)
            if mask.size >= 100:
                out.append(_photo_or_canvas(mask, rng))
    return out, [-1] * len(out)


def _shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    img = Image.new("L", (200, 200), 0)
    d = ImageDraw.Draw(img)
    w = int(rng.integers(4, 18))
    if kind == "circle":
        d.ellipse([30, 30, 170, 170], outline=255, width=w)
    elif kind == "ellipse":
        d.ellipse([20, 60, 180, 140], outline=255, width=w)
    elif kind == "square":
        d.rectangle([40, 40, 160, 160], outline=255, width=w)
    elif kind == "filled":
        d.ellipse([40, 40, 160, 160], fill=255) if rng.random() < 0.5 else d.rectangle([50, 50, 150, 150], fill=255)
    elif kind == "triangle":
        d.polygon([(100, 20), (180, 170), (20, 170)], outline=255, width=w)
    elif kind == "star":
        t = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        r = np.where(np.arange(10) % 2 == 0, 80.0, 32.0)
        d.polygon(list(zip(100 + r * np.cos(t), 100 + r * np.sin(t), strict=True)), outline=255, width=w)
    elif kind == "cross":
        d.line([(30, 30), (170, 170)], fill=255, width=w)
        d.line([(170, 30), (30, 170)], fill=255, width=w)
    elif kind == "spiral":
        t = np.linspace(0, 6 * np.pi, 200)
        d.line(list(zip(100 + 4 * t * np.cos(t), 100 + 4 * t * np.sin(t), strict=True)), fill=255, width=w)
    elif kind == "scribble":
        pts = rng.uniform(20, 180, (int(rng.integers(6, 14)), 2))
        d.line([(float(x), float(y)) for x, y in pts], fill=255, width=w, joint="curve")
    elif kind == "smiley":
        d.ellipse([20, 20, 180, 180], outline=255, width=w)
        d.ellipse([65, 65, 80, 80], fill=255)
        d.ellipse([120, 65, 135, 80], fill=255)
        d.arc([60, 90, 140, 150], 20, 160, fill=255, width=w)
    elif kind == "grid":
        for v in (60, 100, 140):
            d.line([(v, 20), (v, 180)], fill=255, width=w)
            d.line([(20, v), (180, v)], fill=255, width=w)
    else:  # arrow
        d.line([(20, 100), (170, 100)], fill=255, width=w)
        d.line([(130, 60), (172, 100), (130, 140)], fill=255, width=w)
    return ur.transform(np.asarray(img, np.float32) / 255, rng, rot=30, shear=0.2)


def shapes(seed: int = 808) -> Suite:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(25):
        for kind in SHAPES:
            mask = _shape(kind, rng)
            out.append(ur.photo(mask, rng) if i % 2 == 0 else ur.canvas(mask, rng))
    return out, [-1] * len(out)


def _noise_page(i: int, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(64, 320))
    kind = i % 5
    if kind == 0:
        return rng.integers(0, 256, (side, side)).astype(np.float64)
    if kind == 1:  # salt and pepper
        return np.where(rng.random((side, side)) < rng.uniform(0.05, 0.5), 20.0, 240.0)
    if kind == 2:
        return 128 + ur.lowfreq(rng, side, side, int(rng.integers(3, 12)), 60)
    if kind == 3:  # blobs
        page = np.full((side, side), 235.0)
        yy, xx = np.mgrid[0:side, 0:side]
        for _ in range(int(rng.integers(3, 15))):
            cy, cx, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(3, side / 6)
            page[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(10, 120)
        return page
    return np.asarray(ndimage.gaussian_filter(rng.normal(128, 80, (side, side)), rng.uniform(1, 4)))


def noise(seed: int = 909) -> Suite:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(150):
        img = Image.fromarray(np.clip(_noise_page(i, rng), 0, 255).astype(np.uint8))
        out.append(ur.encode(img, "PNG") if i % 2 else ur.encode(img.convert("RGB"), "JPEG", quality=85))
    return out, [-1] * len(out)


def blank_pages(seed: int = 1010) -> Suite:
    rng = np.random.default_rng(seed)
    return [ur.photo(np.zeros((20, 20), np.float32), rng) for _ in range(100)], [-1] * 100


def _texture(i: int, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(200, 480))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    kind = i % 4
    if kind == 0:  # wood grain
        warp = 20 * ur.lowfreq(rng, side, side, 4, 1)
        return 150 + 40 * np.sin((xx + warp) / rng.uniform(3, 9)) + ur.lowfreq(rng, side, side, 8, 20)
    if kind == 1:  # fabric weave
        period = rng.uniform(3, 8)
        return 160 + 30 * np.sin(xx / period) * np.sin(yy / period) + rng.normal(0, 8, (side, side))
    if kind == 2:  # crumpled paper
        return 220 + ur.lowfreq(rng, side, side, int(rng.integers(6, 20)), 25) + rng.normal(0, 3, (side, side))
    grain = ndimage.gaussian_filter(rng.normal(140, 50, (side, side)), rng.uniform(0.7, 2))  # concrete, carpet
    return np.asarray(grain + ur.lowfreq(rng, side, side, 5, 20))


def textured_pages(seed: int = 1111) -> Suite:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(100):
        page = np.clip(_texture(i, rng), 0, 255)
        rgb = page[..., None] * np.array([1.0, rng.uniform(0.85, 1), rng.uniform(0.7, 1)])
        out.append(ur.encode(Image.fromarray(rgb.astype(np.uint8)), "JPEG", quality=int(rng.integers(60, 92))))
    return out, [-1] * len(out)


def fashion(seed: int = 1212, n: int = 500) -> Suite:
    path = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        raise SourceMissing(f"{path} not found: apt-get install dataset-fashion-mnist (or make system-deps)")
    with gzip.open(path) as fh:
        items = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    rng = np.random.default_rng(seed)
    out = []
    for item in items:
        side = int(rng.integers(140, 300))
        up = np.clip(ur.resize(item.astype(np.float32) / 255, side, side, Image.Resampling.BICUBIC), 0, 1)
        grey = np.clip(245 - 220 * up + rng.normal(0, 2, up.shape), 0, 255).astype(np.uint8)
        out.append(ur.encode(Image.fromarray(grey).convert("RGB"), "JPEG", quality=85))
    return out, [-1] * len(out)


NON_DIGITS: dict[str, Callable[[], Suite]] = {
    "letters": letters,
    "symbols": symbols,
    "shapes": shapes,
    "noise": noise,
    "blank_pages": blank_pages,
    "textured_pages": textured_pages,
    "fashion": fashion,
}
