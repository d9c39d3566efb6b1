"""Regression populations, digits as users upload them, already preprocessed: the digits
detector's threshold is calibrated on them (training_worker.calibrate), and they are made to be
the retrain gate's fixed suites (training_worker.suites; not yet wired in, see docs/models.md).

``regression_suites.npz`` (package data, written once by ``python -m bench.make_regression_suites``;
provenance and sha256 in data/README.md) holds four populations the model never trains on:
phone photos and canvas exports of 22 Debian handwriting fonts, scikit-learn's optdigits (other
writers) scanned at low resolution and blown up, and outlined ("hollow") digits photographed.
MNIST held-out, the fifth, is the base data set's own split (training_worker.suites).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training_worker.settings import shipped_data_dir

REGRESSION_FILE = "regression_suites.npz"
FONT_DIGITS_FILE = "font_digits.npz"
UPLOAD_DIGITS_FILE = "upload_digits.npz"
POPULATIONS = ("photos", "canvases", "lowres_scans", "hollow")


def regression_populations(data_dir: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{population: (images uint8 (N, 28, 28), labels int64 (N,))} from ``regression_suites.npz``
    in ``data_dir`` when it has one, else the copy installed with this package."""
    path = Path(data_dir or shipped_data_dir()) / REGRESSION_FILE
    if not path.is_file():
        path = shipped_data_dir() / REGRESSION_FILE
    with np.load(path, allow_pickle=False) as data:
        return {name: (data[f"{name}_images"], data[f"{name}_labels"].astype(np.int64)) for name in POPULATIONS}


def font_digits(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``font_digits.npz``: digits of the
    training-only font families rendered as photos, canvas exports, outlined strokes and
    low-resolution scans, preprocessed (``python -m bench.make_font_digits``). Never evaluated on:
    no evaluation font is among them. Empty arrays when the file is absent."""
    path = Path(data_dir or shipped_data_dir()) / FONT_DIGITS_FILE
    if not path.is_file():
        path = shipped_data_dir() / FONT_DIGITS_FILE
    if not path.is_file():
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"].astype(np.int64)


def upload_digits(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(digit images uint8 (N, 28, 28), labels int64 (N,), non-digit images uint8 (M, 28, 28)) of
    ``upload_digits.npz``: the base data set's training digits rendered as photos, canvas exports,
    low-resolution scans and outlined strokes, and non-digits of the training-only fonts and random
    strokes, preprocessed (``python -m bench.make_upload_digits``). Empty arrays when absent."""
    path = Path(data_dir or shipped_data_dir()) / UPLOAD_DIGITS_FILE
    if not path.is_file():
        path = shipped_data_dir() / UPLOAD_DIGITS_FILE
    if not path.is_file():
        empty = np.zeros((0, 28, 28), np.uint8)
        return empty, np.zeros(0, np.int64), empty
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"].astype(np.int64), data["nondigits"]


def realistic_uploads(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The regression populations pooled: what the detector's threshold is calibrated on."""
    named = regression_populations(data_dir)
    return np.concatenate([x for x, _ in named.values()]), np.concatenate([y for _, y in named.values()])
