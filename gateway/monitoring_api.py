"""``POST /v1/jobs/<id>/feedback`` (the true label of a job) and ``GET /v1/monitoring/<model>``.

Feedback is written by the gateway itself into the prediction log (SQLAlchemy; no torch or
MLflow here). The monitoring report is the monitor service's latest one, read from Redis, plus
the model's retraining history.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from digitflow.errors import InputGoneError, InvalidRequestError, JobNotFoundError, ModelNotFoundError
from digitflow.jobs import is_valid_job_id
from digitflow.model_view import read_entry
from digitflow.monitor_store import read_report, retrain_history
from digitflow.predlog import PredictionLog
from digitflow.settings import MonitorSettings
from gateway.credentials import labelling_credential
from gateway.services import services

bp = Blueprint("monitoring", __name__)
_lock = threading.Lock()
THRESHOLD_KEYS = ("p_value", "psi", "accuracy_drop", "outlier_rate")


def prediction_log() -> PredictionLog:
    """The process's prediction log, opened on first use (after gateway.serve forks its processes)."""
    with _lock:
        log = current_app.extensions.get("digitflow_predlog")
        if log is None:
            log = current_app.extensions["digitflow_predlog"] = PredictionLog(services().settings.prediction_db_url)
        return log


def _label_of(body: Any) -> int:
    label = body.get("label") if isinstance(body, dict) else None
    if isinstance(label, bool) or not isinstance(label, int):
        raise InvalidRequestError('the body must be JSON {"label": <integer class index>}')
    return label


@bp.post("/v1/jobs/<job_id>/feedback")
def feedback(job_id: str) -> Response:
    """Record the true label of a finished job, sent with the credential that submitted it or
    the admin token (401 unauthorized, 403 forbidden otherwise; a label set by one credential is
    changed only by it or the admin). Idempotent (the same label again answers 200; a
    different one replaces it). 400 invalid_request (no integer label, or outside the model's
    classes), 404 job_not_found, 409 input_gone (no logged input: failed, unfinished or pruned)."""
    svc = services()
    if not is_valid_job_id(job_id):
        raise JobNotFoundError("no job with this id", job_id=job_id[:64])
    label = _label_of(request.get_json(silent=True))
    # Labels steer retraining: only the submitting credential (or the admin) may set one.
    credentials = svc.store.credentials(job_id)
    owner, labeller = credentials if credentials is not None else (None, "")
    credential = labelling_credential(svc, job_id, owner, labeller)
    log = prediction_log()
    row = log.get(job_id)
    if row is None:
        status = svc.store.status(job_id)
        if status is None:
            raise JobNotFoundError("no job with this id (unknown or expired)", job_id=job_id)
        raise InputGoneError(f"job is {status}: its input is not in the prediction log", job_id=job_id, status=status)
    if not 0 <= label < int(row.classes):
        raise InvalidRequestError(f"label must be in [0, {int(row.classes) - 1}] for model {row.model}", label=label)
    if row.pixels is None:
        raise InputGoneError("the job's input is no longer stored", job_id=job_id)
    if credentials is not None:
        svc.store.set_labeller(job_id, credential)
    log.set_feedback(job_id, label)
    return jsonify({"job_id": job_id, "label": label, "recorded": True})


@bp.get("/v1/monitoring/<model>")
def monitoring(model: str) -> Response:
    """The latest monitoring report of ``model``; 404 model_not_found for a model the registry
    view does not know and the monitor never reported on."""
    svc = services()
    report = read_report(svc.redis, model)
    if report is None:
        if read_entry(svc.redis, model) is None:
            raise ModelNotFoundError(f"no model named {model!r}", model=model[:128])
        defaults = {key: getattr(MonitorSettings, key) for key in THRESHOLD_KEYS}
        report = {"model": model, "generated_at": None, "thresholds": defaults, "versions": []}
    report["retraining"] = retrain_history(svc.redis, model)
    return jsonify(report)
