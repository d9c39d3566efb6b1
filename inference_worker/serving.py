"""Which model serves a job: a per-process cache of loaded models, loaded on first use.

Loading happens lazily in the pool process (never before fork: CUDA does not survive fork).
A model that fails to load is not retried on every batch: the failure is remembered for a few
seconds, so a corrupt file costs one attempt per interval rather than one per job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from digitflow.errors import DigitflowError, ModelNotFoundError, ModelUnavailableError
from digitflow.messages import Item
from digitflow.observability import MODEL_LOADED, MODEL_LOADS, log_event
from digitflow.settings import InferenceSettings
from inference_worker.model import LoadedModel, load_model

logger = logging.getLogger("inference_worker.serving")
RETRY_FAILED_LOAD_S = 5.0


def latest_version_dir(model_root: Path, name: str) -> Path:
    """The highest numbered version directory of ``name``; ModelNotFoundError if none."""
    base = model_root / name
    versions = sorted((int(p.name), p) for p in base.glob("*") if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ModelNotFoundError(f"no versions of model {name!r} under {base}", model=name)
    return versions[-1][1]


class ModelCache:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._models: dict[str, LoadedModel] = {}
        self._failures: dict[str, tuple[float, DigitflowError]] = {}

    def get(self, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is not None:
            return model
        failed = self._failures.get(name)
        if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            raise failed[1]
        try:
            path = Path(self.settings.model_path_override) if self.settings.model_path_override else None
            model = load_model(
                path or latest_version_dir(self.settings.model_dir, name),
                device=self.settings.device,
                threads=self.settings.torch_threads,
            )
        except DigitflowError as exc:
            self._failures[name] = (time.monotonic(), exc)
            MODEL_LOADS.labels(name, "failed").inc()
            log_event(logger, "model_load_failed", logging.ERROR, model=name, error_code=exc.code)
            raise
        except Exception as exc:  # anything else a broken file provokes is still "unavailable"
            err = ModelUnavailableError(f"model {name!r} could not be loaded: {type(exc).__name__}", model=name)
            self._failures[name] = (time.monotonic(), err)
            MODEL_LOADS.labels(name, "failed").inc()
            log_event(logger, "model_load_failed", logging.ERROR, model=name, error_code=err.code)
            raise err from exc
        self._failures.pop(name, None)
        self._models[name] = model
        MODEL_LOADS.labels(name, "loaded").inc()
        MODEL_LOADED.labels(name, str(model.version)).set(1)
        log_event(logger, "model_loaded", model=name, version=str(model.version), device=str(model.device))
        return model


def infer_items(items: Sequence[Item], cache: ModelCache) -> list[Item | DigitflowError]:
    """One forward pass per model present in the batch; a model that fails fails its jobs only."""
    out: list[Item | DigitflowError | None] = [None] * len(items)
    by_model: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_model.setdefault(item["model"], []).append(i)
    for name, idx in by_model.items():
        try:
            model = cache.get(name)
            logits = model.predict_logits([items[i]["pixels"] for i in idx])
        except DigitflowError as exc:
            for i in idx:
                out[i] = exc
            continue
        for row, i in enumerate(idx):
            out[i] = {
                "job_id": items[i]["job_id"],
                "model": name,
                "version": str(model.version),
                "logits": [float(x) for x in logits[row]],
            }
    return [o for o in out if o is not None]
