"""``digitflow train NAME``: train, evaluate, log the run to MLflow, register a new version and,
with ``--promote-if-better``, promote it when it beats production on the same held-out data.

The run records the parameters, the held-out metrics, the data set's hash and the code version,
and a confusion matrix picture (``confusion.png``). The version's files are the usual
``weights.safetensors`` + ``model.json``, logged as artifacts (no pickle). Production is
re-evaluated here, with the same code on the same held-out images, rather than trusted from its
recorded metric, so the comparison is like for like.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitflow.model_store import RegistryStore
from digitflow.reference import save_reference
from digitnet.loading import load_model
from training_worker.calibrate import build_reference
from training_worker.confusion_png import confusion_png
from training_worker.datasets import Dataset, load_dataset
from training_worker.settings import TrainingSettings
from training_worker.trainer import TrainConfig, evaluate, fit, model_metadata, to_tensor, write_model_dir

log = logging.getLogger("training_worker.register")
Promote = Callable[[str, str], dict[str, Any]]


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per epoch
    otherwise)."""

    def __init__(self, epochs: int, width: int = 30) -> None:
        self.epochs, self.width = epochs, width
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def __call__(self, epoch: int, done: int, total: int, loss: float) -> None:
        if not self.tty and done != total:
            return
        share = ((epoch - 1) + done / max(total, 1)) / max(self.epochs, 1)
        filled = round(self.width * share)
        bar = "#" * filled + "." * (self.width - filled)
        line = (
            f"epoch {epoch}/{self.epochs} [{bar}] {share:4.0%} loss {loss:.4f} {time.monotonic() - self.started:.0f}s"
        )
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and done == total and epoch == self.epochs:
            sys.stderr.write("\n")
        sys.stderr.flush()


def heldout_accuracy_of(path: Path, ds: Dataset) -> float:
    """Accuracy of the model in ``path`` on the data set's held-out split (same code as training)."""
    loaded = load_model(path, device="cpu", threads=torch.get_num_threads())
    acc, _ = evaluate(loaded.net, to_tensor(ds.x_held), torch.from_numpy(ds.y_held.astype(np.int64)))
    return acc


def train_and_register(
    name: str,
    settings: TrainingSettings,
    cfg: TrainConfig,
    promote_if_better: bool = False,
    promote: Promote | None = None,
    progress: bool = True,
    registered: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """Train model ``name`` on its data set and register the result as a new version.

    ``promote(name, version)`` moves production (through the registry service, or directly);
    it is called only with ``promote_if_better`` and only when the new version's held-out
    accuracy is strictly above production's, or when there is no production version yet.
    ``registered(name)`` runs once the version exists (to refresh the registry view).
    Returns what happened: version, accuracies, whether it was promoted and why.
    """
    ds = load_dataset(name, settings)
    store = RegistryStore(settings.tracking_uri, settings.artifact_root)
    run_id = store.start_run(name, f"train {name}")
    bar = ProgressBar(cfg.epochs) if progress and cfg.epochs > 0 else None
    model, metrics, confusion = fit(ds, cfg, on_batch=bar)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    params = {k: v for k, v in metrics.items() if k not in numeric or k in {"epochs", "batch_size", "seed", "threads"}}
    store.log_run(run_id, {**params, "model": name, "input_profile": ds.profile, "lr": cfg.lr}, numeric)
    with tempfile.TemporaryDirectory(prefix="digitflow-train-") as tmp:
        png = Path(tmp) / "confusion.png"
        png.write_bytes(
            confusion_png(confusion, ds.labels, f"{name}: held-out accuracy {metrics['heldout_accuracy']:.2%}")
        )
        store.client.log_artifact(run_id, str(png))
        model_dir = Path(tmp) / "model"
        next_version = store.next_version(name)
        write_model_dir(model_dir, model, model_metadata(name, next_version, ds, metrics, confusion))
        save_reference(model_dir, build_reference(model, ds))  # outlier detector + drift reference
        version = store.register_dir(name, model_dir, run_id=run_id, description=f"digitflow train {name}")
    store.client.set_terminated(run_id, "FINISHED")
    if registered is not None:
        registered(name)
    outcome: dict[str, Any] = {
        "name": name,
        "version": version,
        "run_id": run_id,
        "heldout_accuracy": metrics["heldout_accuracy"],
        "promoted": False,
    }
    if not promote_if_better:
        return outcome
    production = store.alias(name)
    if production is None:
        outcome["reason"] = "no production version yet"
    else:
        with tempfile.TemporaryDirectory(prefix="digitflow-prod-") as tmp:
            prod_acc = heldout_accuracy_of(store.download(name, production, Path(tmp)), ds)
        outcome.update(production=production, production_accuracy=round(prod_acc, 4))
        if metrics["heldout_accuracy"] <= round(prod_acc, 4):
            outcome["reason"] = f"not better than production version {production} ({prod_acc:.2%})"
            log.info("version %s is not promoted: %s", version, outcome["reason"])
            return outcome
        outcome["reason"] = f"beats production version {production} ({prod_acc:.2%})"
    if promote is None:
        raise ValueError("promote_if_better needs a promote function")
    outcome["deploy"] = promote(name, version)
    outcome["promoted"] = True
    return outcome
