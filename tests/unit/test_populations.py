"""The shipped regression populations and training-font renders (training_worker/data), and the
digits detector calibrated on realistic uploads (training_worker.calibrate)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from bench import population_suites as ps
from digitnet.loading import load_model
from training_worker.calibrate import features_and_logits
from training_worker.datasets import load_mnist_5k
from training_worker.populations import (
    FONT_DIGITS_FILE,
    POPULATIONS,
    REGRESSION_FILE,
    UPLOAD_DIGITS_FILE,
    font_digits,
    realistic_uploads,
    regression_populations,
    upload_digits,
)
from training_worker.settings import shipped_data_dir

DATA = shipped_data_dir()
SHIPPED = Path(__file__).resolve().parents[2] / "digitflow" / "shipped_models" / "digits" / "1"


def test_regression_populations_are_preprocessed_digits_of_every_class() -> None:
    named = regression_populations()
    assert tuple(named) == POPULATIONS
    for images, labels in named.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28) and len(images) == len(labels) >= 300
        assert np.bincount(labels, minlength=10).min() >= 25
        assert (images.reshape(len(images), -1).max(axis=1) == 255).all()  # normalized: peak ink 255


def test_data_readme_names_each_file_by_its_sha256() -> None:
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for name in (REGRESSION_FILE, FONT_DIGITS_FILE, UPLOAD_DIGITS_FILE):
        digest = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
        assert re.search(rf"`{re.escape(name)}`\)?: `{digest}`", readme), name


def test_training_fonts_are_no_evaluation_font() -> None:
    with np.load(DATA / FONT_DIGITS_FILE, allow_pickle=False) as data:
        trained = set(data["fonts"].tolist())
    evaluated = {Path(p).name for p in (*ps.HAND_FONTS, *ps.SERIF_FONTS)}
    assert len(trained) >= 40 and not trained & evaluated
    images, labels = font_digits()
    assert len(images) == len(labels) > 3000 and set(labels.tolist()) == set(range(10))


def test_shipped_detector_passes_97_percent_of_realistic_uploads() -> None:
    model = load_model(SHIPPED, device="cpu")
    ref = model.reference
    assert ref is not None
    images, _, held = load_mnist_5k()
    uploads, _ = realistic_uploads()
    held_scores, upload_scores = (ref.scores(*features_and_logits(model.net, x)) for x in (images[held], uploads))
    pooled = np.concatenate([held_scores, upload_scores])
    assert float((pooled > ref.threshold).mean()) <= 0.031
    assert float((upload_scores > ref.threshold).mean()) <= 0.04
    # Calibrated on MNIST held-out alone (its 95th percentile, the old rule), the same detector
    # would flag over twice as many real uploads.
    assert float((upload_scores > np.quantile(held_scores, 0.95)).mean()) > 0.08


def test_upload_digits_render_only_training_digits_and_ship_non_digits() -> None:
    from bench.make_upload_digits import LOOKALIKES, NONDIGIT_CHARS, training_sources

    _, labels, held = load_mnist_5k()
    sources = training_sources()
    assert len(sources) == len(labels) - len(held) and not set(sources.tolist()) & set(held.tolist())
    assert not set(NONDIGIT_CHARS) & (LOOKALIKES | set("0123456789"))
    images, ys, nondigits = upload_digits()
    assert len(images) == len(ys) > 7000 and np.bincount(ys, minlength=10).min() > 600
    assert nondigits.dtype == np.uint8 and nondigits.shape[1:] == (28, 28) and len(nondigits) > 1500
    with np.load(DATA / UPLOAD_DIGITS_FILE, allow_pickle=False) as data:
        assert set(data["style_names"].tolist()) == {"photo", "canvas", "lowres", "hollow"}
        assert np.bincount(data["styles"], minlength=4).min() > 500  # every kind of upload is there


def test_a_flag_goes_on_an_upright_one_and_never_on_a_stem_leaning_back() -> None:
    """The continental flag of the rendered 1s: down and to the left from the top of the stem;
    a stem leaning back keeps none, since with a flag it would be a 7."""
    from bench.make_upload_digits import with_flag

    rng = np.random.default_rng(0)
    upright = np.zeros((120, 20), np.float32)
    upright[:, 6:14] = 1.0
    flagged = with_flag(upright, rng)
    assert flagged.shape[1] > upright.shape[1] + 20  # the flag reaches out to the left
    left = flagged[:, : flagged.shape[1] - 14] > 0.5  # everything left of the stem
    rows = np.flatnonzero(left.any(axis=1))
    assert rows.max() < 0.5 * flagged.shape[0]  # only in the top half: a flag, not a foot
    leaning = np.zeros((120, 60), np.float32)
    for y in range(120):
        leaning[y, y // 3 : y // 3 + 8] = 1.0  # the top is left of the bottom
    assert with_flag(leaning, rng) is leaning
