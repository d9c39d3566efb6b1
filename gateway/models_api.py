"""``/v1/models``: what the registry holds, and promotion / rollback for admins.

Reads come from the registry's view in Redis (``df:models``): the gateway never imports MLflow.
Writes are tasks for the registry service (``registry.promote``, ``registry.rollback``), which
answers through Redis once every live inference process confirmed the switch or one failed;
they need ``Authorization: Bearer <ADMIN_TOKEN>``.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, jsonify, request

from digitflow.errors import (
    AdminDisabledError,
    ForbiddenError,
    InvalidRequestError,
    ModelNotFoundError,
    UnauthorizedError,
)
from digitflow.model_spec import SPEC_RE, production_of, public_entry
from digitflow.model_view import read_entry, read_view
from digitflow.tasks import REGISTRY_PROMOTE, REGISTRY_ROLLBACK
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
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, bool) or not str(version or "").isdigit() or int(str(version)) < 1:
        raise InvalidRequestError('send a JSON body like {"version": 3}')
    alias = body.get("alias", "production") if isinstance(body, dict) else "production"
    payload = {"name": _name(name), "version": str(int(str(version))), "alias": str(alias)}
    result = svc.registry.call(REGISTRY_PROMOTE, payload, svc.settings.registry_timeout_s)
    return jsonify({"promoted": result})


@bp.post("/v1/models/<name>/rollback")
def rollback(name: str) -> Response:
    """Production goes back to the version before the current one (409 when there is none)."""
    svc = services()
    _check_admin(svc)
    result = svc.registry.call(REGISTRY_ROLLBACK, {"name": _name(name)}, svc.settings.registry_timeout_s)
    return jsonify({"rolled_back": result})
