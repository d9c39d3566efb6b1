"""Write training_worker/data/upload_digits.npz: the 4,000 TRAINING digits of mnist_5k.npz (never
the held-out 1,000) rendered as users upload them, plus non-digits from the training-only fonts
and random strokes, all through the real preprocessing. Training data only; no evaluation source
(no evaluation font, no optdigits, no MNIST held-out digit) is used.

    python -m bench.make_upload_digits        (about 3 minutes on one core)

Each training digit becomes two uploads, each drawn from: a phone photo of the digit in pen (35%),
a canvas export with a brush of 0-14 px (30%), the digit scanned at 7-16 px and blown up, the
way low-resolution scans of paper forms look (25%), an outlined ("hollow") stroke photographed
(10%). The non-digits (outlier exposure: the trainer pushes their softmax towards uniform) are
letters and symbols of the training-only fonts that do not look like digits, and random
pen strokes, loops and polygons, as photos or canvas exports. Deterministic for the same data,
fonts, preprocessing and package versions; provenance and sha256 in training_worker/data/README.md.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from bench import population_suites as ps
from bench import upload_render as ur
from bench.population_eval import preprocess_all
from training_worker.datasets import load_mnist_5k
from training_worker.populations import UPLOAD_DIGITS_FILE
from training_worker.settings import shipped_data_dir

SEED = 5151
STYLES = ("photo", "canvas", "lowres", "hollow")
STYLE_P = (0.35, 0.30, 0.25, 0.10)
FLAGGED_ONES = 0.4  # of the 1s get a continental flag (with_flag)
# Letters that read as digits (O/0, l/1, S/5, Z/2, B/8, g/9 ...) are not outliers: left out.
LOOKALIKES = set("OoIlijZzSsBbgqDTtGAJUuCcLPeE")
NONDIGIT_CHARS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in LOOKALIKES] + list(
    "+=*#@&?!%<>~^"
)


def mnist_mask(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST digit (ink high) as a pen coverage mask 100-160 px tall, slanted and rotated a little."""
    ys, xs = np.nonzero(img > 30)
    crop = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255
    scale = rng.uniform(100, 160) / max(crop.shape)
    big = ur.resize(crop, round(crop.shape[1] * scale), round(crop.shape[0] * scale), Image.Resampling.BICUBIC)
    # MNIST's anti-aliased edge blown up is a wide ramp; a pen's edge is sharp.
    lo = rng.uniform(0.25, 0.45)
    return ur.transform(np.clip((big - lo) / 0.3, 0, 1), rng, rot=6, shear=0.15)


def brush(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The stroke drawn with a brush 0-14 px wider on each side, as the fonts' canvas exports are
    (Pillow's ``stroke_width``, bench/population_suites.brush_mask)."""
    width = int(rng.choice([0, 3, 6, 10, 14]))
    if width == 0:
        return mask
    yy, xx = np.mgrid[-width : width + 1, -width : width + 1]
    return ndimage.grey_dilation(np.pad(mask, width), footprint=yy**2 + xx**2 <= width**2)


def hollow(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ring between the stroke grown by 4-8 px and the stroke itself grown a little."""
    width = int(rng.integers(4, 9))
    core = mask > 0.5
    outer = ndimage.binary_dilation(core, iterations=width)
    inner = ndimage.binary_dilation(core, iterations=max(1, width // 3))
    return (outer & ~inner).astype(np.float32)


def lowres(mask: np.ndarray, rng: np.random.Generator) -> bytes:
    """Scanned at a few pixels per stroke: area-shrunk to 7-16 px, levels 0..16, then blown up."""
    side = int(rng.integers(7, 17))
    scale = side / max(mask.shape)
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    cells = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(size, Image.Resampling.BOX))
    cells = np.clip(cells / max(float(cells.max()), 1e-3), 0, 1)
    return ur.lowres_scan(np.round(cells * 16), rng)


def with_flag(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 1 written the continental way: an upstroke ("flag") from the top of the stem, down and
    to the left, 25-45% of the digit's height, at 30-55 degrees below the horizontal, in the
    stem's own pen width. MNIST's writers rarely drew it; many other writers do."""
    core = mask > 0.5
    ys, xs = np.nonzero(core)
    top = int(ys.min())
    x_top = float(xs[ys <= top + 2].mean())
    if x_top < float(xs[ys >= ys.max() - 2].mean()) - 0.05 * mask.shape[0]:
        return mask  # a stem leaning back: with a flag it would be a 7
    width = max(2, round(2 * float(ndimage.distance_transform_edt(core).max())))
    length = rng.uniform(0.25, 0.45) * mask.shape[0]
    angle = np.deg2rad(rng.uniform(30, 55))
    pad = int(length) + width
    img = Image.fromarray((np.pad(mask, pad) * 255).astype(np.uint8))
    start = (x_top + pad, top + pad + width / 2)
    end = (start[0] - length * np.cos(angle), start[1] + length * np.sin(angle))
    ImageDraw.Draw(img).line([start, end], fill=255, width=width, joint="curve")
    return ur.crop(np.asarray(img, np.float32) / 255)


def digit_upload(img: np.ndarray, label: int, style: str, rng: np.random.Generator) -> bytes:
    mask = mnist_mask(img, rng)
    if label == 1 and rng.random() < FLAGGED_ONES:
        mask = with_flag(mask, rng)
    if style == "photo":
        return ur.photo(mask, rng)
    if style == "canvas":
        return ur.canvas(brush(mask, rng), rng)
    if style == "lowres":
        return lowres(mask, rng)
    return ur.photo(hollow(mask, rng), rng)


def stroke_mask(rng: np.random.Generator) -> np.ndarray:
    """Random pen work that is no digit: a few curves, loops or polygons of one pen width."""
    img = Image.new("L", (200, 200), 0)
    draw = ImageDraw.Draw(img)
    width = int(rng.integers(3, 16))
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.random()
        if kind < 0.4:
            pts = rng.uniform(15, 185, (int(rng.integers(3, 9)), 2))
            draw.line([(float(x), float(y)) for x, y in pts], fill=255, width=width, joint="curve")
        elif kind < 0.7:
            n = int(rng.integers(3, 8))
            t = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = rng.uniform(30, 90, n)
            cx, cy = rng.uniform(70, 130, 2)
            pts = [(float(cx + a * np.cos(b)), float(cy + a * np.sin(b))) for a, b in zip(r, t, strict=True)]
            draw.polygon(pts, outline=255, width=width)
        else:
            x0, y0 = rng.uniform(10, 100, 2)
            x1, y1 = x0 + rng.uniform(40, 100), y0 + rng.uniform(40, 100)
            start = float(rng.uniform(0, 360))
            draw.arc([x0, y0, x1, y1], start, start + float(rng.uniform(90, 330)), fill=255, width=width)
    return ur.transform(np.asarray(img, np.float32) / 255, rng, rot=30, shear=0.2)


def nondigit_uploads(fonts: list[str], rng: np.random.Generator) -> list[bytes]:
    out = []
    for font in fonts:
        for ch in NONDIGIT_CHARS:
            if rng.random() < 0.5:
                continue  # half of them: enough variety, half the rendering time
            mask = ur.transform(ur.glyph(font, ch, 160, int(rng.choice([0, 0, 2, 5]))), rng)
            if mask.size >= 100:
                out.append(ur.photo(mask, rng) if rng.random() < 0.6 else ur.canvas(brush(mask, rng), rng))
    for i in range(1200):
        mask = stroke_mask(rng)
        out.append(ur.photo(mask, rng) if i % 2 == 0 else ur.canvas(mask, rng))
    return out


def training_sources() -> np.ndarray:
    """Indices into mnist_5k.npz of the digits rendered: every digit outside the held-out split."""
    _, labels, held = load_mnist_5k()
    return np.setdiff1d(np.arange(len(labels)), held)


def main(out: Path | None = None) -> Path:
    images, labels, _ = load_mnist_5k()
    rng = np.random.default_rng(SEED)
    data, ys, kinds = [], [], []
    sources = training_sources()
    for img, label in zip(images[sources], labels[sources], strict=True):
        for _ in range(2):
            style = int(rng.choice(len(STYLES), p=STYLE_P))
            data.append(digit_upload(img, int(label), STYLES[style], rng))
            ys.append(int(label))
            kinds.append(style)
        if len(ys) % 1000 == 0:
            print(f"  {len(ys)} digit uploads rendered", file=sys.stderr, flush=True)
    pixels, ok, ms = preprocess_all(data)
    print(f"digits: {int(ok.sum())} of {len(data)} accepted, {ms:.2f} ms each to preprocess", file=sys.stderr)
    others = nondigit_uploads(ps.train_fonts(), rng)
    o_pixels, o_ok, _ = preprocess_all(others)
    print(f"non-digits: {int(o_ok.sum())} of {len(others)} accepted", file=sys.stderr)
    path = out or shipped_data_dir() / UPLOAD_DIGITS_FILE
    np.savez_compressed(
        path,
        images=pixels[ok],
        labels=np.asarray(ys, np.uint8)[ok],
        styles=np.asarray(kinds, np.uint8)[ok],
        style_names=np.array(STYLES),
        nondigits=o_pixels[o_ok],
    )
    print(f"{path}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
