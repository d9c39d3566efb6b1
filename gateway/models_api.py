"""``/v1/models``: what the registry holds, and promotion / rollback for admins.

Reads come from the registry's view in Redis (``df:models``): the gateway never imports MLflow.
Writes are tasks for the registry service (``registry.promote``, ``registry.rollback``,
``registry.candidate``, ``registry.retire``, ``registry.servable``), which answers through Redis
once every live inference process confirmed the switch or one failed; they need
``Authorization: Bearer <ADMIN_TOKEN>``. ``/v1/models/<name>/canary`` is the candidate in
release: its record from the view, and its live numbers and decision from the monitor's report.
"""

from __future__ import annotations

import hmac
from typing import Any, cast

from flask import Blueprint, Response, jsonify, request

from digitflow.errors import (
    AdminDisabledError,
    ForbiddenError,
    InvalidRequestError,
    ModelNotFoundError,
    UnauthorizedError,
)
from digitflow.model_spec import MODES, SPEC_RE, canary_of, production_of, public_entry
from digitflow.model_view import read_entry, read_view
from digitflow.monitor_store import read_report
from digitflow.tasks import (
    REGISTRY_CANDIDATE,
    REGISTRY_PROMOTE,
    REGISTRY_RETIRE,
    REGISTRY_ROLLBACK,
    REGISTRY_SERVABLE,
)
from gateway.services import GatewayServices, services

bp = Blueprint("models", __name__)


def _check_admin(svc: GatewayServices) -> None:
    token = svc.settings.admin_token
    if not token:
        raise AdminDisabledError("admin actions disabled: set ADMIN_TOKEN on the gateway to enable them")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not given.removeprefix("Bearer ").strip():
        raise UnauthorizedError("an admin token is required (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.removeprefix("Bearer ").strip().encode(), token.encode()):
        raise ForbiddenError("the admin token is not valid")


def _name(name: str) -> str:
    match = SPEC_RE.match(name)
    if match is None or match.group(2):
        raise InvalidRequestError("a model name is lowercase letters, digits, '-' and '_'", model=name[:80])
    return name


def _version_of(body: Any) -> str:
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, bool) or not str(version or "").isdigit() or int(str(version)) < 1:
        raise InvalidRequestError('send a JSON body like {"version": 3}')
    return str(int(str(version)))


def _entry(name: str) -> dict[str, Any]:
    entry = read_entry(services().redis, _name(name))
    if entry is None:
        raise ModelNotFoundError(f"no model named {name!r} in the registry", model=name)
    return entry


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    production = production_of(entry)
    record = entry.get("versions", {}).get(production, {}) if production else {}
    return {
        "name": entry["name"],
        "production": production,
        "aliases": entry.get("aliases", {}),
        "versions": len(entry.get("versions", {})),
        "input_profile": record.get("input_profile"),
        "labels": record.get("labels"),
        "metrics": record.get("metrics"),
        "candidate": (canary_of(entry) or {}).get("version"),
        "links": {"self": f"/v1/models/{entry['name']}"},
    }


@bp.get("/v1/models")
def list_models() -> Response:
    """Every registered model with its production version; MODELS while the registry is empty."""
    svc = services()
    view = read_view(svc.redis)
    if not view:
        fallback = [{"name": n, "production": None, "links": {"self": f"/v1/models/{n}"}} for n in svc.settings.models]
        return jsonify({"models": fallback, "registry": False})
    return jsonify({"models": [_summary(e) for e in view.values()], "registry": True})


@bp.get("/v1/models/<name>")
def show_model(name: str) -> Response:
    """One model: aliases, production history, every version with its profile, labels, metrics."""
    svc = services()
    entry = read_entry(svc.redis, _name(name))
    if entry is None:
        raise ModelNotFoundError(f"no model named {name!r} in the registry", model=name)
    return jsonify(public_entry(entry))


@bp.post("/v1/models/<name>/promote")
def promote(name: str) -> Response:
    """``{"version": 3}`` (optional ``"alias": "candidate"``): 200 once every inference process
    serves it; 409 ``model_version_invalid`` / ``deploy_failed`` when it cannot serve."""
    svc = services()
    _check_admin(svc)
    body = request.get_json(silent=True)
    version = _version_of(body)
    alias = body.get("alias", "production") if isinstance(body, dict) else "production"
    payload = {"name": _name(name), "version": version, "alias": str(alias)}
    result = svc.registry.call(REGISTRY_PROMOTE, payload, svc.settings.registry_timeout_s)
    return jsonify({"promoted": result})


@bp.post("/v1/models/<name>/rollback")
def rollback(name: str) -> Response:
    """Production goes back to the version before the current one (409 when there is none)."""
    svc = services()
    _check_admin(svc)
    result = svc.registry.call(REGISTRY_ROLLBACK, {"name": _name(name)}, svc.settings.registry_timeout_s)
    return jsonify({"rolled_back": result})


@bp.get("/v1/models/<name>/canary")
def show_canary(name: str) -> Response:
    """The candidate in release (null if none) with the monitor's numbers and decision, the
    servable versions and the last release outcomes."""
    svc = services()
    entry = _entry(name)
    canary = canary_of(entry)
    report = read_report(svc.redis, entry["name"]) or {}
    numbers = report.get("canary")
    if canary is not None and isinstance(numbers, dict) and numbers.get("version") == canary["version"]:
        canary = {**canary, **numbers, "evaluated_at": report.get("generated_at")}
    public = public_entry(entry)
    return jsonify(
        {
            "name": entry["name"],
            "production": public["production"],
            "canary": canary,
            "servable": public["servable"],
            "releases": public["releases"],
        }
    )


@bp.post("/v1/models/<name>/canary")
def start_canary(name: str) -> Response:
    """``{"version": 3, "mode": "canary"|"shadow", "share": 0.1}``: make it the candidate
    (every inference process loads it first; 409 ``deploy_failed`` if one cannot)."""
    svc = services()
    _check_admin(svc)
    body = request.get_json(silent=True)
    version = _version_of(body)
    body = cast(dict[str, Any], body)  # _version_of refused anything else
    mode = body.get("mode", svc.settings.canary_mode)
    share = body.get("share", svc.settings.canary_share)
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of {', '.join(MODES)}", mode=str(mode)[:20])
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise InvalidRequestError("share must be a number in (0, 1]")
    payload = {"name": _name(name), "version": version, "mode": mode, "share": float(share), "by": "admin"}
    return jsonify({"candidate": svc.registry.call(REGISTRY_CANDIDATE, payload, svc.settings.registry_timeout_s)})


@bp.post("/v1/models/<name>/canary/promote")
def promote_canary(name: str) -> Response:
    """The candidate becomes production now (two-phase deploy); 409 ``no_candidate`` if none."""
    svc = services()
    _check_admin(svc)
    payload = {"name": _name(name), "candidate": True, "by": "admin", "reason": "promoted by an admin"}
    return jsonify({"promoted": svc.registry.call(REGISTRY_PROMOTE, payload, svc.settings.registry_timeout_s)})


@bp.post("/v1/models/<name>/canary/abort")
def abort_canary(name: str) -> Response:
    """Retire the candidate (``{"reason": "..."}`` optional); 409 ``no_candidate`` if none."""
    svc = services()
    _check_admin(svc)
    body = request.get_json(silent=True)
    reason = body.get("reason") if isinstance(body, dict) else None
    reason = str(reason)[:300] if reason else "aborted by an admin"
    payload = {"name": _name(name), "reason": reason, "by": "admin"}
    return jsonify({"aborted": svc.registry.call(REGISTRY_RETIRE, payload, svc.settings.registry_timeout_s)})


@bp.post("/v1/models/<name>/servable")
def servable(name: str) -> Response:
    """``{"version": 2, "servable": true}``: allow pinning ``name@2`` (every inference process
    loads it first) or, with false, forbid it again."""
    svc = services()
    _check_admin(svc)
    body = request.get_json(silent=True)
    version = _version_of(body)
    body = cast(dict[str, Any], body)  # _version_of refused anything else
    flag = body.get("servable", True)
    if not isinstance(flag, bool):
        raise InvalidRequestError("servable must be true or false")
    payload = {"name": _name(name), "version": version, "servable": flag}
    return jsonify({"servable": svc.registry.call(REGISTRY_SERVABLE, payload, svc.settings.registry_timeout_s)})
