"""The gateway's OpenAPI description, served at ``/openapi.json`` and fuzzed by the tests."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

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


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for c in codes}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "digitflow gateway", "version": "1"},
    "paths": {
        "/v1/jobs": {
            "post": {
                "summary": "Submit one job per image",
                "parameters": [
                    {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
                    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}},
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
                                    "model": {"type": "string"},
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
                    **_errors(400, 401, 404, 413, 415, 429, 503),
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "A job's state and answer",
                "parameters": [
                    {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "maximum": 2}},
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
                "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
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
                "responses": {"200": {"description": "recorded"}, **_errors(400, 404, 409, 415, 503)},
            }
        },
        "/v1/models": {"get": {"summary": "Registered models", "responses": {"200": {"description": "models"}}}},
        "/v1/models/{name}": {
            "get": {
                "summary": "One model's versions and aliases",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the model"}, **_errors(400, 404)},
            }
        },
        "/v1/monitoring/{model}": {
            "get": {
                "summary": "Drift, accuracy and outlier statistics per version",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
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
