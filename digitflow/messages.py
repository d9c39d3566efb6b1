"""What travels between stages: one batch message per hop, msgpack-encoded by Celery.

A batch is ``{"v", "batch_id", "sent_at", "items"}``; each item names its job and carries only
what the next stage needs. Image bytes never travel: the gateway parks them in Redis under the
job id (claim check) and the preprocess stage fetches them. Pixels travel as 784 raw bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from digitflow.errors import InvalidMessageError

SCHEMA_VERSION = 1
PIXELS = 28 * 28
MAX_ITEMS = 1024
# W3C trace context, version 00 (digitflow/tracing.py): the job's span at the previous hop.
TRACEPARENT_RE = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


class Item(TypedDict, total=False):
    job_id: str
    model: str
    # Set by the gateway from the registry view: which preprocessing the model wants, and the
    # version a job pinned (``digits@3``); absent = the model's production version.
    profile: str
    pin: str
    # Set by inference: the one version that served the job, and its class labels.
    version: str
    labels: list[str]
    pixels: bytes
    logits: list[float]
    # Monitoring (issue 6): set by preprocess, [ink_ratio, mean_intensity, aspect]; set by
    # inference, the penultimate embedding (128 float16 bytes), the outlier score of the
    # version's detector with its threshold, and its calibration temperature.
    ink: list[float]
    embedding: bytes
    outlier_score: float
    outlier_threshold: float
    temperature: float
    # Set by every stage: the job's fence as the sending delivery held it (digitflow/jobs.py);
    # the next stage claims the job only while it is still that one.
    fence: str
    # Tracing (optional; only while tracing is on): W3C traceparent of the job's last span.
    traceparent: str
    # Set by inference while a candidate runs in shadow: the candidate's answer to the same
    # input (version, logits, embedding, outlier_score, outlier_threshold, temperature), which
    # postprocess logs as a shadow row and never returns.
    shadow: dict[str, Any]


class Batch(TypedDict):
    v: int
    batch_id: str
    sent_at: float
    items: list[Item]


def make_batch(batch_id: str, items: Sequence[Item], sent_at: float | None = None) -> Batch:
    return {
        "v": SCHEMA_VERSION,
        "batch_id": batch_id,
        "sent_at": time.time() if sent_at is None else sent_at,
        "items": list(items),
    }


def check_item(raw: Any, needs: Sequence[str]) -> Item:
    """Validate one item; raise InvalidMessageError (with the job id when it has one)."""
    if not isinstance(raw, Mapping):
        raise InvalidMessageError("batch item is not a mapping")
    job_id = raw.get("job_id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 64:
        raise InvalidMessageError("batch item has no valid job_id")
    if not isinstance(raw.get("model"), str):
        raise InvalidMessageError("batch item has no model", job_id=job_id)
    for key in ("profile", "pin", "fence"):
        if key in raw and not isinstance(raw[key], str):
            raise InvalidMessageError(f"batch item {key!r} must be a string", job_id=job_id)
    if "traceparent" in raw and not (isinstance(raw["traceparent"], str) and TRACEPARENT_RE.match(raw["traceparent"])):
        raise InvalidMessageError("batch item 'traceparent' must be a W3C traceparent", job_id=job_id)
    for key in needs:
        if key not in raw:
            raise InvalidMessageError(f"batch item lacks {key!r}", job_id=job_id)
    if "pixels" in needs and (not isinstance(raw["pixels"], bytes) or len(raw["pixels"]) != PIXELS):
        raise InvalidMessageError("pixels must be 784 bytes", job_id=job_id)
    if "logits" in needs:
        logits = raw["logits"]
        if not isinstance(logits, list) or not logits or not all(isinstance(x, float | int) for x in logits):
            raise InvalidMessageError("logits must be a non-empty list of numbers", job_id=job_id)
    return Item(**raw)


def parse_batch(raw: Any) -> Batch:
    """Validate a received batch's envelope; items are checked one by one with check_item,
    so that one malformed item fails only its own job."""
    if not isinstance(raw, Mapping):
        raise InvalidMessageError("batch is not a mapping")
    if raw.get("v") != SCHEMA_VERSION:
        raise InvalidMessageError(f"unsupported batch schema version {raw.get('v')!r}")
    items = raw.get("items")
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        raise InvalidMessageError("batch items must be a list of at most 1024")
    sent_at = raw.get("sent_at")
    if not isinstance(sent_at, float | int):
        raise InvalidMessageError("batch has no sent_at")
    return make_batch(str(raw.get("batch_id", "")), items, float(sent_at))
