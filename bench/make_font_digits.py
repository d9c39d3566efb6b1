"""Write training_worker/data/font_digits.npz: digits of the TRAINING-ONLY font families
(bench/population_suites.py TRAIN_FONT_GLOBS, none of them an evaluation font) rendered as uploads
are made and passed through the real preprocessing, for training and for fitting the detector.

    python -m bench.make_font_digits        (about 3 minutes; needs fonts-dejavu-core,
        fonts-comic-neue, fonts-dancingscript, fonts-kaushanscript, fonts-leckerli-one,
        fonts-opendyslexic and fonts-urw-base35)

Per font and digit, 8 uploads: 2 phone photos, 2 canvas exports with thick brushes, 2 photos of
which 30% are outlined ("hollow") strokes, 2 low-resolution scans (the glyph shrunk to 7-14 px
and blown up). Deterministic for the same fonts, preprocessing and package versions; provenance
and sha256 in training_worker/data/README.md.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench import population_suites as ps
from bench import upload_render as ur
from bench.population_eval import preprocess_all
from training_worker.populations import FONT_DIGITS_FILE
from training_worker.settings import shipped_data_dir

SEED = 4242


def lowres(mask: np.ndarray, rng: np.random.Generator) -> bytes:
    """The glyph scanned at a few pixels per stroke: area-shrunk to 7-14 px, then ur.lowres_scan."""
    side = int(rng.integers(7, 15))
    scale = side / max(mask.shape)
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    cells = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(size, Image.Resampling.BOX))
    return ur.lowres_scan(np.clip(cells / max(float(cells.max()), 1e-3), 0, 1) * 16, rng)


def uploads(fonts: list[str]) -> tuple[list[bytes], list[int]]:
    rng = np.random.default_rng(SEED)
    data, labels = [], []
    for font in fonts:
        for digit in range(10):
            ch = str(digit)
            for _ in range(2):
                data.append(ur.photo(ps.pen_mask(font, ch, rng), rng))
                data.append(ur.canvas(ps.brush_mask(font, ch, rng), rng))
                mask = ps.hollow_mask(font, ch, rng) if rng.random() < 0.3 else ps.pen_mask(font, ch, rng)
                data.append(ur.photo(mask, rng))
                data.append(lowres(ps.pen_mask(font, ch, rng), rng))
                labels += [digit] * 4
    return data, labels


def main(out: Path | None = None) -> Path:
    fonts = ps.train_fonts()
    path = out or shipped_data_dir() / FONT_DIGITS_FILE
    data, labels = uploads(fonts)
    pixels, ok, _ = preprocess_all(data)
    names = np.array([Path(f).name for f in fonts])
    np.savez_compressed(path, images=pixels[ok], labels=np.asarray(labels, np.uint8)[ok], fonts=names)
    print(f"{len(fonts)} fonts, {int(ok.sum())} of {len(data)} digits (refused {int((~ok).sum())})")
    print(f"{path}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
