"""Turning a request into validated uploads, before anything is queued.

Everything the gateway can tell cheaply is refused here with a 4xx: no image, empty parts,
too many parts, non-images, truncated files, decompression bombs, formats not allowed,
unknown models, malformed idempotency keys. Decoding itself happens in the preprocess stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Request

from digitflow.errors import (
    DigitflowError,
    EmptyImageError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedFormatError,
)
from digitflow.images import ImageInfo, UploadBudget, inspect_image
from digitflow.model_spec import ModelSpec, resolve, servable_versions
from digitflow.settings import GatewaySettings
from gateway.model_lookup import ModelViewCache
from gateway.multipart import request_parts, text_field

IDEMPOTENCY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
PREFER_WAIT_RE = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    data: bytes
    info: ImageInfo


@dataclass(frozen=True)
class ModelChoice:
    """The model a job asked for: its name, a pinned version (``digits@3``) or None for
    production, and the input profile its preprocessing follows (None: the default)."""

    name: str
    pin: str | None = None
    profile: str | None = None


def _refused_by(view: dict[str, dict[str, Any]], spec: ModelSpec, settings: GatewaySettings) -> bool:
    """Whether the cached view would refuse ``spec``: only then is it worth a fresh read. With no
    registry the view stays empty and MODELS decides, so re-reading it on every request (a Redis
    round trip each) would change nothing."""
    if not view:
        return spec.name not in settings.models
    return spec.name not in view or (spec.pin is not None and spec.pin not in servable_versions(view[spec.name]))


def model_of(request: Request, settings: GatewaySettings, views: ModelViewCache) -> ModelChoice:
    """The requested model (form field or query), checked against the registry's view
    (``df:models``, cached per process), or against MODELS while the view is empty. Raises
    InvalidRequestError for a malformed name and ModelNotFoundError (404) for an unknown model
    or version."""
    text = (
        text_field(request_parts(request, settings.max_parts), "model")
        or request.args.get("model")
        or settings.default_model
    )
    spec = ModelSpec.parse(text)
    view = views.get()
    if _refused_by(view, spec, settings):
        view = views.get(refresh=True)  # registered (or marked servable) a moment ago?
    if not view:
        if spec.name not in settings.models:
            raise ModelNotFoundError(f"no model named {spec.name!r}", model=spec.name, available=list(settings.models))
        return ModelChoice(spec.name, spec.pin)
    entry = view.get(spec.name)
    if entry is None:
        raise ModelNotFoundError(f"no model named {spec.name!r}", model=spec.name, available=sorted(view))
    try:
        _, record = resolve(entry, spec.pin)
    except ModelNotFoundError as exc:  # an unknown version is an unknown model to a client
        raise ModelNotFoundError(exc.message, **exc.details) from exc
    return ModelChoice(spec.name, spec.pin, record.get("input_profile") or None)


def uploads_of(request: Request, settings: GatewaySettings) -> list[Upload]:
    """The images of a request: multipart ``image`` parts, or a raw ``image/*`` body."""
    content_type = request.mimetype or ""
    if content_type == "multipart/form-data":
        blobs = [part.data for part in request_parts(request, settings.max_parts) if part.name == "image"]
        if not blobs:
            raise InvalidRequestError("multipart upload has no 'image' field")
        if len(blobs) > settings.max_parts:
            raise InvalidRequestError(f"at most {settings.max_parts} images per request", parts=len(blobs))
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
    budget = UploadBudget(settings.max_parts, settings.max_upload_bytes, settings.max_request_pixels)
    for index, blob in enumerate(blobs):
        if not blob:
            raise EmptyImageError("the image is empty", part=index)
        try:
            info = inspect_image(blob, settings.max_image_pixels)
            budget.charge(len(blob), info)  # the request's total images, bytes, pixels, metadata
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
