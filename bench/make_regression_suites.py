"""Write training_worker/data/regression_suites.npz: the retrain gate's fixed regression
populations (training_worker.populations), rendered once through the real preprocessing.

    python -m bench.make_regression_suites        (about 3 minutes; needs the evaluation fonts
                                                    of bench/population_suites.py and scikit-learn)

Same generators as `python -m bench.populations`, other seeds and fewer per population, so the
gate's images are not the evaluation's. Uploads that preprocessing refuses are left out (the gate
measures the model). Deterministic: the same bytes on every run with the same preprocessing and
package versions; re-run it when preprocess_worker/ changes, and update the sha256 in
training_worker/data/README.md.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from bench import population_suites as ps
from bench import upload_render as ur
from bench.population_eval import preprocess_all
from training_worker.populations import REGRESSION_FILE
from training_worker.settings import shipped_data_dir


def _scans() -> ps.Suite:
    """Every 4th optdigits digit (the drift demo never sends these), scanned three times."""
    uploads: list[bytes] = []
    labels: list[int] = []
    for seed in (1101, 1102, 1103):
        more, ys = ps.lowres_scans(seed, slice(0, None, 4))
        uploads += more
        labels += ys
    return uploads, labels


def populations() -> dict[str, ps.Suite]:
    # 1,300-odd images each: one point is 13 images, above the 1-2 point swing a fine-tune's
    # random seed alone gives on a suite of 440 (the gate's margin is one point).
    hand = ps.fonts(ps.HAND_FONTS)
    return {
        "photos": ps.font_digits(hand, 6, 2202, ur.photo, ps.pen_mask),
        "canvases": ps.font_digits(hand, 6, 3303, ur.canvas, ps.brush_mask),
        "lowres_scans": _scans(),
        "hollow": ps.font_digits(hand[1::2], 6, 4404, ur.photo, ps.hollow_mask),
    }


def main(out: Path | None = None) -> Path:
    path = out or shipped_data_dir() / REGRESSION_FILE
    arrays: dict[str, np.ndarray] = {}
    for name, (uploads, labels) in populations().items():
        pixels, ok, _ = preprocess_all(uploads)
        arrays[f"{name}_images"] = pixels[ok]
        arrays[f"{name}_labels"] = np.asarray(labels, np.int64)[ok]
        print(f"{name}: {int(ok.sum())} of {len(uploads)} (refused {int((~ok).sum())})")
    np.savez_compressed(path, allow_pickle=False, **arrays)
    print(f"{path}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
