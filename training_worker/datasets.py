"""The data sets a model can be trained on: images, labels, input profile and a fixed held-out split.

``digits``: the 5,000 real MNIST digits shipped in ``training_worker/data/mnist_5k.npz`` (its fixed, stratified
1,000 held-out digits are never trained on), plus digits rendered as uploads are made (training-only
fonts, and the 4,000 training digits as photos, canvas exports, scans and outlined strokes), augmented.
``fashion``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (60,000 training
images; the 10,000 test images are the held-out split), not augmented. Each data set names the
input profile its images follow, so preprocessing at serving time matches training.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitflow.model_files import DIGITS_PROFILE, FASHION_PROFILE
from training_worker.populations import FONT_DIGITS_FILE, UPLOAD_DIGITS_FILE, font_digits, upload_digits
from training_worker.settings import BASE_DATA_FILE, TrainingSettings, shipped_data_dir

FASHION_DIR = TrainingSettings.fashion_mnist_dir
DIGIT_LABELS = [str(d) for d in range(10)]
FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass(frozen=True)
class Dataset:
    """uint8 (N, 28, 28) images, light object on dark, and int labels; train and held-out."""

    name: str
    profile: str
    labels: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray
    sha256: str
    augment: bool
    # Non-digit images the trainer pushes towards a uniform softmax (outlier exposure); may be empty.
    x_outlier: np.ndarray = field(default_factory=lambda: np.zeros((0, 28, 28), np.uint8))


class DatasetUnavailableError(RuntimeError):
    """The data set's files are not on this machine (say which package or file provides them)."""


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format), plain or gzipped, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_mnist_5k(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (images uint8 Nx28x28, labels uint8 N, heldout_idx) from ``mnist_5k.npz`` in
    ``data_dir`` (default: the copy installed with this package)."""
    with np.load((data_dir or shipped_data_dir()) / BASE_DATA_FILE, allow_pickle=False) as data:
        return data["images"], data["labels"], data["heldout_idx"]


def digits(data_dir: Path | None = None) -> Dataset:
    """MNIST's 4,000 training digits plus the same kind of digits as users upload them (the
    training-only fonts of ``font_digits.npz`` and the training digits rendered as uploads in
    ``upload_digits.npz``, both preprocessed) and its non-digits for outlier exposure; held out:
    the base data set's fixed 1,000 digits, never rendered into any training file."""
    root = data_dir or shipped_data_dir()
    images, labels, heldout = load_mnist_5k(data_dir)
    train = np.ones(len(labels), dtype=bool)
    train[heldout] = False
    x_font, y_font = font_digits(data_dir)
    x_up, y_up, x_non = upload_digits(data_dir)
    files = [root / name for name in (BASE_DATA_FILE, FONT_DIGITS_FILE, UPLOAD_DIGITS_FILE)]
    return Dataset(
        "mnist_5k.npz+font_digits.npz+upload_digits.npz",
        DIGITS_PROFILE,
        DIGIT_LABELS,
        np.concatenate([images[train], x_font, x_up]),
        np.concatenate([labels[train].astype(np.int64), y_font, y_up]),
        images[heldout],
        labels[heldout].astype(np.int64),
        sha256_files([p for p in files if p.is_file()]),
        augment=True,
        x_outlier=x_non,
    )


def fashion(root: Path = FASHION_DIR) -> Dataset:
    """Fashion-MNIST; DatasetUnavailableError when ``dataset-fashion-mnist`` is not installed."""
    files = [
        root / f"{split}-{kind}-idx{n}-ubyte.gz"
        for split in ("train", "t10k")
        for kind, n in (("images", 3), ("labels", 1))
    ]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"Fashion-MNIST not found ({missing[0]}): apt-get install dataset-fashion-mnist, or set FASHION_MNIST_DIR"
        )
    x_train, y_train, x_held, y_held = (read_idx(p) for p in files)
    return Dataset(
        "fashion-mnist",
        FASHION_PROFILE,
        FASHION_LABELS,
        x_train,
        y_train.astype(np.int64),
        x_held,
        y_held.astype(np.int64),
        sha256_files(files),
        augment=False,
    )


def load_dataset(model: str, settings: TrainingSettings | None = None) -> Dataset:
    """The data set a model of this name trains on, from ``settings``' DATA_DIR and
    FASHION_MNIST_DIR (default: the shipped data); KeyError for names with none."""
    if model == "digits":
        return digits(settings.data_dir if settings else None)
    if model == "fashion":
        return fashion(settings.fashion_mnist_dir if settings else FASHION_DIR)
    raise KeyError(f"no data set for model {model!r} (known: digits, fashion)")
