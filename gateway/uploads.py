"""Turning a request into validated uploads, before anything is queued.

Everything the gateway can tell cheaply is refused here with a 4xx: no image, empty parts,
too many parts, non-images, truncated files, decompression bombs, formats not allowed,
unknown models, malformed idempotency keys. Decoding itself happens in the preprocess stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Request

from digitflow.errors import (
    DigitflowError,
    EmptyImageError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedFormatError,
)
from digitflow.images import ImageInfo, inspect_image
from digitflow.settings import GatewaySettings

MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
IDEMPOTENCY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
PREFER_WAIT_RE = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    data: bytes
    info: ImageInfo


def model_of(request: Request, settings: GatewaySettings) -> str:
    """The requested model (form field or query), validated; ModelNotFoundError if unknown."""
    name = request.form.get("model") or request.args.get("model") or settings.default_model
    if not MODEL_RE.match(name):
        raise InvalidRequestError("model must be a lowercase name like 'digits'", model=name[:80])
    if name not in settings.models:
        raise ModelNotFoundError(f"no model named {name!r}", model=name, available=list(settings.models))
    return name


def uploads_of(request: Request, settings: GatewaySettings) -> list[Upload]:
    """The images of a request: multipart ``image`` parts, or a raw ``image/*`` body."""
    content_type = request.mimetype or ""
    if content_type == "multipart/form-data":
        parts = request.files.getlist("image")
        if not parts:
            raise InvalidRequestError("multipart upload has no 'image' field")
        if len(parts) > settings.max_parts:
            raise InvalidRequestError(f"at most {settings.max_parts} images per request", parts=len(parts))
        blobs = [part.read() for part in parts]
    elif content_type.startswith("image/"):
        blobs = [request.get_data(cache=False)]
    elif not content_type:
        raise InvalidRequestError("send multipart/form-data with an 'image' field or a raw image/* body")
    else:
        raise UnsupportedFormatError(
            f"unsupported content type {content_type!r}: use multipart/form-data or image/*",
            content_type=content_type[:100],
        )
    uploads = []
    for index, blob in enumerate(blobs):
        if not blob:
            raise EmptyImageError("the image is empty", part=index)
        try:
            info = inspect_image(blob, settings.max_image_pixels)
        except DigitflowError as exc:
            exc.details.setdefault("part", index)
            raise
        uploads.append(Upload(blob, info))
    return uploads


def idempotency_key_of(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_RE.match(key):
        raise InvalidRequestError("Idempotency-Key must be 1-200 visible ASCII characters")
    return key


def prefer_wait_of(request: Request, max_wait_s: float) -> float:
    """Seconds to hold the request from ``Prefer: wait=N`` (RFC 7240), capped; 0 if absent."""
    match = PREFER_WAIT_RE.search(request.headers.get("Prefer", ""))
    return min(float(match.group(1)), max_wait_s) if match else 0.0


def wait_param_of(request: Request, max_wait_s: float) -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError as exc:
        raise InvalidRequestError("wait must be a number of seconds", wait=raw[:20]) from exc
    if not 0 <= value <= 3600 or value != value:
        raise InvalidRequestError("wait must be between 0 and 3600 seconds", wait=raw[:20])
    return min(value, max_wait_s)
