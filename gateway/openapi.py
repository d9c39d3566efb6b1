"""The gateway's OpenAPI description, served at ``/openapi.json`` and fuzzed by the tests."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from digitflow.model_spec import MODES

bp = Blueprint("openapi", __name__)

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}},
        }
    },
}
_ACCEPTED = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "status": {"type": "string"},
        "links": {"type": "object"},
        "jobs": {"type": "array", "items": {"type": "object"}},
    },
}
_JOB = {
    "type": "object",
    "required": ["job_id", "status", "model", "result", "error", "timings_ms", "created_at", "finished_at"],
    "properties": {
        "job_id": {"type": "string"},
        "status": {"enum": ["queued", "preprocessing", "inferring", "postprocessing", "succeeded", "failed"]},
        "model": {"type": "object"},
        "result": {"type": ["object", "null"]},
        "error": {"type": ["object", "null"]},
        "timings_ms": {"type": "object"},
        "created_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
    },
}


# The bounds the API enforces, stated exactly (schemathesis checks both directions).
_MODEL_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}
# ``name`` or ``name@version``; empty means the default model.
_MODEL_SPEC = {"type": "string", "pattern": "^(?:[a-z0-9][a-z0-9_-]{0,63}(?:@[1-9][0-9]{0,8})?)?$"}
_JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_IDEMPOTENCY_KEY = {"type": "string", "pattern": "^[!-~]{1,200}$"}
_WAIT = {"type": "number", "minimum": 0, "maximum": 3600}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for c in codes}


_VERSION = {"type": "integer", "minimum": 1, "maximum": 999_999_999}


def _admin(summary: str, body: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An admin write action (``Authorization: Bearer <ADMIN_TOKEN>``; 403 while none is set)."""
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"admin": []}],
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": _MODEL_NAME}],
        "responses": {"200": {"description": "done"}, **_errors(400, 401, 403, 404, 409, 503, 504)},
    }
    if body is not None:
        schema = {"type": "object", "properties": body, "required": list(required)}
        operation["requestBody"] = {"required": bool(required), "content": {"application/json": {"schema": schema}}}
    return {"post": operation}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "digitflow gateway", "version": "1"},
    "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/v1/jobs": {
            "post": {
                "summary": "Submit one job per image",
                "parameters": [
                    {"name": "model", "in": "query", "required": False, "schema": _MODEL_SPEC},
                    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": _IDEMPOTENCY_KEY},
                    {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "model": _MODEL_SPEC,
                                },
                                "required": ["image"],
                            }
                        },
                        "image/png": {"schema": {"type": "string", "format": "binary"}},
                        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": "finished (Prefer: wait)",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "202": {"description": "accepted", "content": {"application/json": {"schema": _ACCEPTED}}},
                    **_errors(400, 401, 404, 413, 415, 422, 429, 503),
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "A job's state and answer",
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": _JOB_ID},
                    {"name": "wait", "in": "query", "required": False, "schema": _WAIT},
                ],
                "responses": {
                    "200": {"description": "the job", "content": {"application/json": {"schema": _JOB}}},
                    **_errors(400, 404, 503),
                },
            }
        },
        "/v1/jobs/{job_id}/feedback": {
            "post": {
                "summary": "Record the true label of a job",
                "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": _JOB_ID}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"label": {"type": "integer"}},
                                "required": ["label"],
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "recorded"}, **_errors(400, 401, 403, 404, 409, 415, 503)},
            }
        },
        "/v1/models": {"get": {"summary": "Registered models", "responses": {"200": {"description": "models"}}}},
        "/v1/models/{name}": {
            "get": {
                "summary": "One model's versions and aliases",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": _MODEL_NAME}],
                "responses": {"200": {"description": "the model"}, **_errors(400, 404)},
            }
        },
        "/v1/models/{name}/canary": {
            "get": {
                "summary": "The candidate in release, its live numbers and the canary decision",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": _MODEL_NAME}],
                "responses": {"200": {"description": "the release state"}, **_errors(400, 404)},
            },
            **_admin(
                "Make a version the candidate (canary or shadow)",
                {
                    "version": _VERSION,
                    "mode": {"enum": list(MODES)},
                    "share": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
                },
                ("version",),
            ),
        },
        "/v1/models/{name}/promote": _admin(
            "Make a version production", {"version": _VERSION, "alias": {"type": "string"}}, ("version",)
        ),
        "/v1/models/{name}/rollback": _admin("Production back to the previous version"),
        "/v1/models/{name}/canary/promote": _admin("The candidate becomes production"),
        "/v1/models/{name}/canary/abort": _admin("Retire the candidate", {"reason": {"type": "string"}}),
        "/v1/models/{name}/servable": _admin(
            "Allow or forbid pinning a version", {"version": _VERSION, "servable": {"type": "boolean"}}, ("version",)
        ),
        "/v1/monitoring/{model}": {
            "get": {
                "summary": "Drift, accuracy and outlier statistics per version",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": _MODEL_NAME}],
                "responses": {"200": {"description": "the report"}, **_errors(400, 404)},
            }
        },
        "/healthz": {"get": {"responses": {"200": {"description": "process up"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
    },
}


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(SPEC)
