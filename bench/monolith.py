"""The baseline a user would build instead of digitflow: one Flask app, every stage in the handler.

    TORCH_THREADS=1 gunicorn -w <cores> --threads 4 -b 127.0.0.1:PORT 'bench.monolith:create_app()'

It runs the same functions digitflow's stages run (``preprocess``, ``LoadedModel.predict_logits``
through the inference worker's ``ModelCache``, ``summarize``), loads the model lazily once per
gunicorn process (never before the fork), accepts the same uploads (multipart ``image`` parts or
a raw ``image/*`` body) and answers synchronously with digitflow's job shape, so one client
drives both. Several parts are inferred in one forward pass, as a careful author would.
``Prefer`` is ignored: every answer is already one round trip.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, jsonify, request

from digitflow.errors import DigitflowError, InvalidRequestError, UnsupportedFormatError
from digitflow.settings import InferenceSettings
from digitflow_cli.supervisor import PY, ServiceSpec
from postprocess_worker.steps import summarize
from preprocess_worker.steps import preprocess

MAX_PARTS = 64
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


class Pipeline:
    """Per-process state: the model cache and the lock that serialises forward passes
    (a LoadedModel serves one thread at a time; preprocessing runs in parallel threads)."""

    def __init__(self, settings: InferenceSettings) -> None:
        # Imported here, not at the top: the harness imports this module for monolith_spec and
        # must not load torch itself.
        from inference_worker.serving import ModelCache

        self.settings = settings
        self.models = ModelCache(settings)
        self.lock = threading.Lock()

    def classify(self, blobs: list[bytes], model_name: str) -> list[dict[str, Any]]:
        """One job view per upload; an upload that fails fails only its own entry."""
        t0 = time.time()
        pixels: list[bytes | DigitflowError] = []
        for blob in blobs:
            try:
                pixels.append(preprocess(blob, self.settings.max_image_pixels))
            except DigitflowError as exc:
                pixels.append(exc)
        good = [p for p in pixels if isinstance(p, bytes)]
        t1 = time.time()
        with self.lock:
            model = self.models.get(model_name)
            logits = model.predict_logits(good)
        t2 = time.time()
        rows = iter(logits)
        views = []
        for item in pixels:
            view: dict[str, Any] = {"job_id": uuid.uuid4().hex, "model": {"name": model.name, "version": model.version}}
            if isinstance(item, DigitflowError):
                error = item.to_dict(stage="preprocess")
                views.append({**view, "status": "failed", "error": error, "http_status": item.status})
            else:
                views.append({**view, "status": "succeeded", "result": summarize(next(rows)), "error": None})
        t3 = time.time()
        timings = {"preprocess": round((t1 - t0) * 1e3, 3), "inference": round((t2 - t1) * 1e3, 3)}
        timings["postprocess"] = round((t3 - t2) * 1e3, 3)
        for view in views:
            view["timings_ms"] = timings
        return views


def _uploads() -> list[bytes]:
    """The images of the request (multipart ``image`` parts or a raw image/* body)."""
    if request.mimetype == "multipart/form-data":
        parts = request.files.getlist("image")
        if not parts:
            raise InvalidRequestError("multipart upload has no 'image' field")
        if len(parts) > MAX_PARTS:
            raise InvalidRequestError(f"at most {MAX_PARTS} images per request", parts=len(parts))
        return [part.read() for part in parts]
    if request.mimetype.startswith("image/"):
        return [request.get_data(cache=False)]
    raise UnsupportedFormatError("use multipart/form-data or an image/* body")


def create_app(settings: InferenceSettings | None = None) -> Flask:
    """The monolith; ``settings`` default to the environment (TORCH_THREADS, MODEL_DIR, ...)."""
    settings = settings or InferenceSettings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # gunicorn builds the app in each worker process (no --preload); the model itself is loaded
    # by the first request a process serves.
    pipeline = Pipeline(settings)

    @app.post("/v1/jobs")
    def submit() -> Response | tuple[Response, int]:
        model = request.form.get("model") or request.args.get("model") or settings.default_model
        views = pipeline.classify(_uploads(), model)
        statuses = [view.pop("http_status", 200) for view in views]
        if len(views) == 1 and views[0]["status"] == "failed":  # a lone bad image is the request's error
            return jsonify({"error": views[0]["error"]}), statuses[0]
        return jsonify(views[0] if len(views) == 1 else {"jobs": views})

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.errorhandler(DigitflowError)
    def _error(err: DigitflowError) -> tuple[Response, int]:
        return jsonify({"error": err.to_dict()}), err.status

    return app


def monolith_spec(port: int, workers: int, threads: int = 4, env: dict[str, str] | None = None) -> ServiceSpec:
    """How the benchmark launches the monolith: gunicorn gthread, one torch thread per process."""
    argv = [PY, "-m", "gunicorn", "-w", str(workers), "--threads", str(threads), "--worker-class", "gthread"]
    argv += ["-b", f"127.0.0.1:{port}", "--keep-alive", "5", "--timeout", "60", "bench.monolith:create_app()"]
    return ServiceSpec("monolith", argv, {"TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})})
