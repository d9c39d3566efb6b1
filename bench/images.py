"""The benchmark's inputs: realistic uploads made from held-out MNIST digits, deterministically.

Every scenario sends the same bytes. Most inputs look like phone photos of a digit written on
paper (200-400 px JPEG, quality 85: dark ink on uneven off-white paper, a lighting gradient,
sometimes a shadow, blur, sensor noise, a slight rotation); the rest look like browser canvas
exports (PNG, transparent or white background). Nothing is downloaded: the digits come from
``data/mnist_5k.npz`` (its ``heldout_idx`` were never trained on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from bench.paths import MNIST_NPZ

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BenchImage:
    """One upload: its file name (which says the format), bytes and the true digit."""

    name: str
    data: bytes
    label: int

    @property
    def content_type(self) -> str:
        return "image/png" if self.name.endswith(".png") else "image/jpeg"


def _ink(digit28: np.ndarray, size: int) -> np.ndarray:
    """The digit upscaled smoothly to size x size, as ink coverage in 0..1."""
    img = Image.fromarray(np.asarray(digit28, dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32) / 255.0, 0.0, 1.0)


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def phone_photo(digit28: np.ndarray, rng: np.random.Generator) -> bytes:
    """A JPEG photo of the digit written on paper, 200-400 px per side."""
    width, height = (int(v) for v in rng.integers(200, 401, size=2))
    side = int(min(width, height) * rng.uniform(0.55, 0.85))
    ink = np.zeros((height, width), np.float32)
    y0 = int(rng.integers(0, height - side + 1))
    x0 = int(rng.integers(0, width - side + 1))
    ink[y0 : y0 + side, x0 : x0 + side] = _ink(digit28, side)
    paper = np.array([rng.uniform(215, 245), rng.uniform(210, 240), rng.uniform(195, 228)], np.float32)
    pen = np.array([rng.uniform(15, 60), rng.uniform(15, 55), rng.uniform(30, 90)], np.float32)
    rgb = paper * (1.0 - ink[..., None]) + pen * ink[..., None]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0
    light = 1.0 - rng.uniform(0.05, 0.3) * ramp  # light falls off across the page
    if rng.random() < 0.4:  # a soft shadow (a hand, the phone) over one corner
        corner = ((yy > height * rng.uniform(0.5, 0.8)) & (xx < width * rng.uniform(0.2, 0.5))).astype(np.float32)
        light *= 1.0 - rng.uniform(0.15, 0.35) * ndimage.gaussian_filter(corner, min(width, height) / 12)
    rgb = rgb * light[..., None] + rng.normal(0.0, rng.uniform(2.0, 6.0), rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.4))))
    fill = tuple(int(c * 0.85) for c in paper)
    img = img.rotate(float(rng.uniform(-7, 7)), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    return _encode(img, "JPEG", quality=85)


def canvas_export(digit28: np.ndarray, rng: np.random.Generator) -> bytes:
    """A PNG as a drawing canvas exports it: black or coloured strokes on transparent or white."""
    size = int(rng.integers(200, 401))
    alpha = _ink(digit28, size)
    colour = np.array([0, 0, 0] if rng.random() < 0.7 else rng.integers(0, 120, size=3), np.float32)
    if rng.random() < 0.5:
        rgba = np.zeros((size, size, 4), np.float32)
        rgba[..., :3] = np.where(alpha[..., None] > 0, colour, 0.0)
        rgba[..., 3] = alpha * 255.0
        return _encode(Image.fromarray(np.rint(rgba).astype(np.uint8), "RGBA"), "PNG")
    rgb = 255.0 * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return _encode(Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB"), "PNG")


def _heldout(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` held-out MNIST digits and their labels, every class in turn."""
    with np.load(MNIST_NPZ) as data:
        heldout = data["heldout_idx"]
        # Round-robin over the classes (the held-out indices are sorted by label).
        by_class = [heldout[data["labels"][heldout] == c] for c in range(10)]
        idx = np.array([by_class[i % 10][i // 10] for i in range(count)])
        return data["images"][idx], data["labels"][idx]


def make_mnist28(count: int = 200) -> list[BenchImage]:
    """``count`` held-out MNIST digits as 28x28 PNGs, dark ink on white: the cheapest upload to
    preprocess, so that a run on them measures what each system costs per job besides the work."""
    digits, labels = _heldout(count)
    return [
        BenchImage(f"{i:03d}_{label}.png", _encode(Image.fromarray(255 - digit), "PNG"), int(label))
        for i, (digit, label) in enumerate(zip(digits, labels, strict=True))
    ]


def make_images(count: int = 200, seed: int = 1234, png_share: float = 0.25) -> list[BenchImage]:
    """``count`` uploads from held-out MNIST digits, every class in turn; the same bytes on every call."""
    digits, labels = _heldout(count)
    rng = np.random.default_rng(seed)
    out = []
    for i, (digit, label) in enumerate(zip(digits, labels, strict=True)):
        if rng.random() < png_share:
            out.append(BenchImage(f"{i:03d}_{label}.png", canvas_export(digit, rng), int(label)))
        else:
            out.append(BenchImage(f"{i:03d}_{label}.jpg", phone_photo(digit, rng), int(label)))
    return out


def write_images(images: list[BenchImage], directory: Path) -> Path:
    """Write the uploads and a manifest (name, label) into ``directory``; return the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    for image in images:
        (directory / image.name).write_bytes(image.data)
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps([{"name": im.name, "label": im.label} for im in images]))
    return manifest


def read_images(directory: Path) -> list[BenchImage]:
    """The uploads :func:`write_images` wrote, in the same order."""
    entries = json.loads((directory / MANIFEST).read_text())
    return [BenchImage(e["name"], (directory / e["name"]).read_bytes(), int(e["label"])) for e in entries]
