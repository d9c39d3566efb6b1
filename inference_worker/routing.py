"""Which version serves each job of a batch while a candidate is in release, and the shadow run.

Canary mode: an unpinned job goes to the candidate when ``routes_to_candidate(job_id, share)``
(a hash of the job id, so a redelivered job gets the same version) and the candidate is loaded
in this process; a cold candidate is loaded in the background and production serves meanwhile.
Each job still names the one version that served it. Shadow mode: production serves every job;
the candidate then runs on the same inputs and its answer travels to postprocess as the item's
``shadow`` (logged as a shadow row, never returned). The release's live counters
(``df:release:<model>``: jobs served and failed per version) feed the monitor's decision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import redis

from digitflow.errors import DigitflowError
from digitflow.keys import RELEASE_PREFIX
from digitflow.messages import Item
from digitflow.model_spec import CANARY, SHADOW, routes_to_candidate

if TYPE_CHECKING:
    from inference_worker.serving import ModelCache

logger = logging.getLogger("inference_worker.routing")
COUNTERS_TTL_S = 7 * 86400


def route_items(items: Sequence[Item], cache: ModelCache) -> list[tuple[str, str | None]]:
    """(model, version to pin or None for production) of each item, canary routing applied."""
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, pin = item["model"], item.get("pin") or None
        release = cache.release(name) if pin is None else None
        if release is not None and release.get("mode") == CANARY:
            version = str(release["version"])
            if routes_to_candidate(item["job_id"], float(release.get("share") or 0.0)):
                if cache.peek(name, version) is not None:
                    pin = version
                else:
                    cache.warm_async(name, version)
        out.append((name, pin))
    return out


def run_shadow(release: dict[str, Any], name: str, served: list[Item], cache: ModelCache) -> None:
    """In shadow mode, run the candidate on production's inputs and attach its answers."""
    if release.get("mode") != SHADOW or not served:
        return
    version = str(release["version"])
    model = cache.peek(name, version)
    if model is None:
        cache.warm_async(name, version)
        return
    try:
        logits, feats = model.predict_with_features([item["pixels"] for item in served])
    except Exception as exc:  # the candidate failing never fails production's jobs
        log_event_failed(name, version, exc)
        count_release(cache.redis, name, version, 0, len(served))
        return
    ref = model.reference
    scores = ref.scores(feats, logits) if ref is not None else None
    for row, item in enumerate(served):
        shadow: dict[str, Any] = {
            "version": version,
            "logits": [float(x) for x in logits[row]],
            "embedding": feats[row].astype(np.float16).tobytes(),
        }
        if ref is not None and scores is not None:
            shadow.update(outlier_score=float(scores[row]), outlier_threshold=ref.threshold)
            shadow["temperature"] = ref.temperature
        item["shadow"] = shadow
    count_release(cache.redis, name, version, len(served), 0)


def log_event_failed(name: str, version: str, exc: BaseException) -> None:
    code = exc.code if isinstance(exc, DigitflowError) else "internal_error"
    logger.warning(
        "shadow run of %s version %s failed: %s",
        name,
        version,
        type(exc).__name__,
        extra={"event": "shadow_failed", "model": name, "version": version, "error_code": code},
    )


def count_release(client: redis.Redis, name: str, version: str, served: int, failed: int) -> None:
    """Add to the release's live counters; best effort, never fails a job."""
    try:
        pipe = client.pipeline(transaction=False)
        if served:
            pipe.hincrby(RELEASE_PREFIX + name, f"{version}:served", served)
        if failed:
            pipe.hincrby(RELEASE_PREFIX + name, f"{version}:failed", failed)
        pipe.expire(RELEASE_PREFIX + name, COUNTERS_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("release counters not written: %s", exc, extra={"event": "release_count_failed"})


def infer_items(items: Sequence[Item], cache: ModelCache) -> list[Item | DigitflowError]:
    """One forward pass per model version in the batch; a model that fails fails its jobs only.

    Each output names the one version that computed it. Unpinned jobs of a model with a canary
    candidate go to the candidate by job id (``inference_worker.routing``); in shadow mode the
    candidate also runs on production's jobs and its answer rides along as ``shadow``."""
    out: list[Item | DigitflowError | None] = [None] * len(items)
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, (name, pin) in enumerate(route_items(items, cache)):
        groups.setdefault((name, pin), []).append(i)
    for (name, pin), idx in groups.items():
        release = cache.release(name)
        try:
            model = cache.get(name, pin)
            logits, feats = model.predict_with_features([items[i]["pixels"] for i in idx])
        except DigitflowError as exc:
            for i in idx:
                out[i] = exc
            if release is not None:
                count_release(cache.redis, name, pin or str(cache.production(name)), 0, len(idx))
            continue
        if release is not None:
            count_release(cache.redis, name, str(model.version), len(idx), 0)
        ref = model.reference
        scores = ref.scores(feats, logits) if ref is not None else None
        for row, i in enumerate(idx):
            result: Item = {
                "job_id": items[i]["job_id"],
                "model": name,
                "version": str(model.version),
                "labels": model.labels,
                "logits": [float(x) for x in logits[row]],
                # For the prediction log: the input, its embedding (float16 bytes), its stats.
                "pixels": items[i]["pixels"],
                "embedding": feats[row].astype(np.float16).tobytes(),
            }
            if "ink" in items[i]:
                result["ink"] = items[i]["ink"]
            if ref is not None and scores is not None:
                result["outlier_score"] = float(scores[row])
                result["outlier_threshold"] = ref.threshold
                result["temperature"] = ref.temperature
            out[i] = result
        if release is not None and pin is None:
            run_shadow(release, name, [cast(Item, out[i]) for i in idx], cache)
    return [o for o in out if o is not None]
