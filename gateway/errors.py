"""One JSON error shape for every failure: ``{"error": {"code", "message", ...}}``."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from digitflow.errors import DigitflowError, ServiceUnavailableError
from digitflow.observability import log_event

logger = logging.getLogger("gateway.errors")

# Werkzeug's own errors (routing, method, size limit) mapped to stable codes.
HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
}


def error_response(err: DigitflowError) -> Response:
    response = jsonify({"error": err.to_dict()})
    response.status_code = err.status
    if isinstance(err, ServiceUnavailableError):
        response.headers["Retry-After"] = str(err.retry_after)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DigitflowError)
    def _digitflow(err: DigitflowError) -> Response:
        if err.status >= 500:
            log_event(logger, "request_failed", logging.ERROR, error_code=err.code)
        return error_response(err)

    @app.errorhandler(redis.RedisError)
    def _redis(err: redis.RedisError) -> Response:
        log_event(logger, "redis_unavailable", logging.WARNING, error_code="service_unavailable")
        return error_response(ServiceUnavailableError("the job store is unreachable; retry shortly", retry_after=2))

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        status = err.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = err.description or err.name
        if status == 413:
            message = f"the upload exceeds the limit of {app.config['MAX_CONTENT_LENGTH'] // (1024 * 1024)} MB"
        response = jsonify({"error": {"code": code, "message": message}})
        response.status_code = status
        if isinstance(err, MethodNotAllowed) and err.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(err.valid_methods))  # RFC 9110 requires it
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        logger.exception("unhandled error", extra={"event": "unhandled_error", "error_code": "internal_error"})
        response = jsonify({"error": {"code": "internal_error", "message": "an unexpected error occurred"}})
        response.status_code = 500
        return response
