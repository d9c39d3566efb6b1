"""``/v1/jobs``: submit images, read jobs, long-poll for their answers."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, cast

from flask import Blueprint, Response, jsonify, request

from digitflow.jobs import TERMINAL, Idempotency, NewJob, new_job_id
from digitflow.messages import Item
from gateway.credentials import client_credential
from gateway.services import GatewayServices, services
from gateway.tracing import stamp_items
from gateway.uploads import (
    ModelChoice,
    Upload,
    idempotency_key_of,
    model_of,
    prefer_wait_of,
    uploads_of,
    wait_param_of,
)

bp = Blueprint("jobs", __name__)
RECHECK_S = 1.0  # waiters re-read the record this often even without a notification


def _fingerprint(model: ModelChoice, uploads: list[Upload]) -> str:
    """What an idempotent replay must repeat: the model asked for and every image's bytes."""
    digest = hashlib.sha256(f"{model.name}@{model.pin or ''}".encode())
    for upload in uploads:
        digest.update(len(upload.data).to_bytes(8, "big"))
        digest.update(upload.data)
    return digest.hexdigest()


def wait_for(
    svc: GatewayServices,
    job_ids: list[str],
    timeout_s: float,
    events: list[threading.Event] | None = None,
    unread: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Current views of ``job_ids``, waiting up to ``timeout_s`` for all to finish.

    ``events`` are completion events registered earlier (before the jobs were dispatched, so no
    notification can slip by); jobs in ``unread`` are known to be unfinished, so their first
    read is skipped: a job answered in one round trip costs two Redis reads fewer.
    """
    events = events or [svc.listener.register(job_id) for job_id in job_ids]
    try:
        deadline = time.monotonic() + timeout_s
        views: list[dict[str, Any] | None] = [None if j in unread else svc.store.get(j) for j in job_ids]
        for i, job_id in enumerate(job_ids):
            while views[i] is None or views[i]["status"] not in TERMINAL:  # type: ignore[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                events[i].wait(min(remaining, RECHECK_S))
                events[i].clear()
                views[i] = svc.store.get(job_id)
            if views[i] is None:
                views[i] = svc.store.get(job_id)
        return cast(list[dict[str, Any]], views)
    finally:
        for job_id, event in zip(job_ids, events, strict=True):
            svc.listener.unregister(job_id, event)


def _item(job_id: str, model: ModelChoice) -> Item:
    item: Item = {"job_id": job_id, "model": model.name}
    if model.profile:
        item["profile"] = model.profile
    if model.pin:
        item["pin"] = model.pin
    return item


def _accepted(job_id: str, status: str) -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "links": {"self": f"/v1/jobs/{job_id}"}}


@bp.post("/v1/jobs")
def submit() -> Response | tuple[Response, int, dict[str, str]]:
    """Accept one job per image; 202 (or 200 with the answer under ``Prefer: wait``)."""
    svc = services()
    owner = client_credential(svc)
    svc.check_overload()
    model = model_of(request, svc.settings, svc.model_views)
    uploads = uploads_of(request, svc.settings)
    key = idempotency_key_of(request)
    jobs = [NewJob(new_job_id(), model.name, upload.data) for upload in uploads]
    items = [_item(job.job_id, model) for job in jobs]
    idempotency = Idempotency(key, _fingerprint(model, uploads)) if key else None
    ids = svc.store.create(jobs, idempotency, owner, svc.backlog.entries(items))
    fresh: list[Item] = items if ids[0] == jobs[0].job_id else []
    wait_s = prefer_wait_of(request, svc.settings.max_wait_s)
    events = [svc.listener.register(job_id) for job_id in ids] if wait_s > 0 else None
    if fresh:
        stamp_items(fresh)  # each job carries its trace context (a no-op while tracing is off)
        svc.dispatch(fresh)

    if wait_s > 0 or len(fresh) < len(jobs):
        views = wait_for(svc, ids, wait_s, events, frozenset(item["job_id"] for item in fresh))
        if wait_s > 0 and all(v["status"] in TERMINAL for v in views):
            body = views[0] if len(views) == 1 else {"jobs": views}
            return jsonify(body), 200, {"Location": f"/v1/jobs/{ids[0]}", "Preference-Applied": f"wait={wait_s:g}"}
        statuses = [v["status"] for v in views]
    else:
        statuses = ["queued"] * len(ids)
    accepted = [_accepted(job_id, status) for job_id, status in zip(ids, statuses, strict=True)]
    body = accepted[0] if len(accepted) == 1 else {"jobs": accepted}
    return jsonify(body), 202, {"Location": f"/v1/jobs/{ids[0]}"}


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """The job's state; ``?wait=N`` holds up to N seconds for it to finish. 404 if unknown."""
    svc = services()
    wait_s = wait_param_of(request, svc.settings.max_wait_s)
    if wait_s > 0:
        svc.ensure_started()
        return jsonify(wait_for(svc, [job_id], wait_s)[0])
    return jsonify(svc.store.get(job_id))
