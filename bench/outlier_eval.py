"""How well the shipped digits detector separates real digits from what is not a digit.

    python -m bench.outlier_eval            (about 30 s)

Inliers: the 1,000 held-out digits, as PNGs through the real preprocessing; the threshold is
re-calibrated on one half (95% pass) and the false-outlier rate measured on the other half, and
the other way round. Outliers, through the same preprocessing: Fashion-MNIST test images (dark
object on white, as a product photo), blank pages (refused by preprocessing as no_ink before
any model runs: counted separately), uniform noise and speckle pages, and letters A-Z / a-z
rendered in the DejaVu fonts. Prints AUROC per outlier set and the false-outlier rate.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import rankdata

from bench.paths import MODELS
from digitflow.errors import DigitflowError
from digitnet.loading import load_model
from preprocess_worker.steps import preprocess
from training_worker.datasets import fashion, load_mnist_5k

FONTS = Path("/usr/share/fonts/truetype/dejavu")


def png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def letters() -> list[bytes]:
    out = []
    for font_path in sorted(FONTS.glob("DejaVuSans*.ttf"))[:6]:
        font = ImageFont.truetype(str(font_path), 90)
        for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
            img = Image.new("L", (140, 140), 255)
            ImageDraw.Draw(img).text((25, 10), ch, fill=0, font=font)
            out.append(png(np.asarray(img)))
    return out


def auroc(inlier: np.ndarray, outlier: np.ndarray) -> float:
    """P(score of an outlier > score of an inlier), ties counted half (Mann-Whitney)."""
    ranks = rankdata(np.concatenate([inlier, outlier]))
    r_out = ranks[len(inlier) :].sum()
    return float((r_out - len(outlier) * (len(outlier) + 1) / 2) / (len(inlier) * len(outlier)))


def main() -> dict[str, object]:
    model = load_model(MODELS / "digits" / "1", device="cpu")
    ref = model.reference
    assert ref is not None, "run `digitflow models calibrate digits 1` first"

    def scores(uploads: list[bytes]) -> tuple[np.ndarray, int]:
        pixels, refused = [], 0
        for data in uploads:
            try:
                pixels.append(preprocess(data, 40_000_000))
            except DigitflowError:
                refused += 1
        logits, feats = model.predict_with_features(pixels)
        return ref.scores(feats, logits), refused

    images, _, held = load_mnist_5k()
    inl, _ = scores([png(255 - images[i]) for i in held])
    rng = np.random.default_rng(0)
    half = rng.permutation(len(inl))
    a, b = inl[half[:500]], inl[half[500:]]
    false_outlier = [float((b > np.quantile(a, 0.95)).mean()), float((a > np.quantile(b, 0.95)).mean())]
    fm = fashion().x_held[:1000]
    sets = {
        "fashion_mnist": [png(255 - x) for x in fm],
        "noise": [png(rng.integers(0, 256, (64, 64))) for _ in range(100)]
        + [png(np.where(rng.random((120, 120)) < 0.5, 20, 250)) for _ in range(100)],
        "letters": letters(),
        "blank_pages": [png(np.full((200, 200), v)) for v in range(200, 256, 2)],
    }
    report: dict[str, object] = {
        "shipped_threshold": ref.threshold,
        "false_outlier_rate_heldout_2fold": false_outlier,
        "false_outlier_rate_at_shipped_threshold": float((inl > ref.threshold).mean()),
    }
    for name, uploads in sets.items():
        out, refused = scores(uploads)
        report[name] = {
            "n": len(uploads),
            "refused_by_preprocess": refused,
            "auroc": auroc(inl, out) if len(out) else None,
            "flagged_at_threshold": float((out > ref.threshold).mean()) if len(out) else None,
        }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
