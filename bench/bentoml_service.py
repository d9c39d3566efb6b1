"""The peer: digitflow's model and preprocessing served by BentoML with adaptive batching.

    OMP_NUM_THREADS=1 <peer venv>/bin/bentoml serve bench.bentoml_service:Digits --port PORT

Runs only in the peer venv (``bench.peer_venv``), never in the dev venv: it imports ``bentoml``.
It serves the same model files (the latest ``digits`` version digitflow ships, loaded with
``digitnet.loading.load_model``, one torch thread) and the same preprocessing
(``preprocess_worker.steps.preprocess``) and summary (``postprocess_worker.steps.summarize``) as
the monolith. The API is what BentoML's documentation shows for a batched image model: one
batchable method taking a list of uploaded files. BentoML merges the lists of concurrent
requests into one call of up to ``max_batch_size`` images, waiting at most
``BENTOML_MAX_LATENCY_MS`` (its SLO: a request that would wait longer is answered 503, and the
benchmark counts that as a failure).

Requests have the monolith's shape (``POST /v1/jobs``, multipart ``image`` parts); the answer is
a JSON list of digitflow-shaped job views, one per part (BentoML answers a batchable API with
the list it returned), which ``bench.load`` reads like the monolith's ``{"jobs": [...]}``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import bentoml

from digitflow.errors import DigitflowError
from digitflow.settings import InferenceSettings, shipped_models_dir
from digitnet.loading import load_model
from postprocess_worker.steps import summarize
from preprocess_worker.steps import preprocess

WORKERS = int(os.environ.get("BENTOML_WORKERS", "2"))
MAX_BATCH = int(os.environ.get("BENTOML_MAX_BATCH", "32"))
MAX_LATENCY_MS = int(os.environ.get("BENTOML_MAX_LATENCY_MS", "1000"))


def latest_model_dir(name: str = "digits") -> Path:
    """The highest shipped version of ``name`` (what the monolith serves by default)."""
    versions = [p for p in (shipped_models_dir() / name).iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


@bentoml.service(workers=WORKERS, traffic={"timeout": 60})
class Digits:
    def __init__(self) -> None:
        self.max_pixels = InferenceSettings.from_env().max_image_pixels
        self.model = load_model(latest_model_dir(), device="cpu", threads=1)

    @bentoml.api(route="/v1/jobs", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def submit(self, image: list[Path]) -> list[dict[str, Any]]:
        """One job view per uploaded file; a file that fails preprocessing fails only its own view."""
        pixels: list[bytes | DigitflowError] = []
        for path in image:
            try:
                pixels.append(preprocess(path.read_bytes(), self.max_pixels))
            except DigitflowError as exc:
                pixels.append(exc)
        logits = iter(self.model.predict_logits([p for p in pixels if isinstance(p, bytes)]))
        model = {"name": self.model.name, "version": self.model.version}
        views: list[dict[str, Any]] = []
        for item in pixels:
            view: dict[str, Any] = {"job_id": uuid.uuid4().hex, "model": model}
            if isinstance(item, DigitflowError):
                views.append({**view, "status": "failed", "error": item.to_dict(stage="preprocess")})
            else:
                views.append({**view, "status": "succeeded", "result": summarize(next(logits)), "error": None})
        return views
