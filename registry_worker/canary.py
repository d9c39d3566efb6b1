"""Canary releases on the registry side: start a candidate, retire (or abort) it, and the set of
versions jobs may pin. Each step runs under the model's promotion lock, records its state in
MLflow tags (``registry_worker.releases``), rewrites the view and tells every inference process
to re-read it. Promotion of a candidate is an ordinary two-phase promotion
(``Deployer.promote``), which ends the release as ``promoted``.

Starting a candidate warms it first: every live inference process loads it (``warm`` phase);
if one cannot, nothing changes (``deploy_failed``), exactly as a promotion that cannot load.
The live counters of the release (``df:release:<model>``: jobs served and failed per version)
start from zero with each candidate.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from digitflow.errors import InvalidRequestError, NoCandidateError
from digitflow.keys import RELEASE_PREFIX
from digitflow.model_spec import CANARY, MODES, PRODUCTION
from digitflow.observability import log_event
from registry_worker import releases
from registry_worker.deploy import Deployer

logger = logging.getLogger("registry_worker.canary")
DEFAULT_MODE, DEFAULT_SHARE = CANARY, 0.1
RELEASE_COUNTERS_TTL_S = 7 * 86400


def check_release(mode: str, share: float) -> None:
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of {', '.join(MODES)}", mode=mode)
    if not 0 < share <= 1:
        raise InvalidRequestError("share must be in (0, 1]", share=share)


def start_candidate(
    d: Deployer,
    name: str,
    version: str,
    mode: str = DEFAULT_MODE,
    share: float = DEFAULT_SHARE,
    suites: dict[str, Any] | None = None,
    by: str = "admin",
) -> dict[str, Any]:
    """Make ``version`` the candidate of ``name`` in ``mode`` (canary: ``share`` of live jobs;
    shadow: every job, answer only logged). A running candidate is replaced (retired)."""
    check_release(mode, share)
    version = str(version)
    with d.locked(name):
        d.store.check_version(name, version)
        d.store.verify(name, version)
        production = d.store.alias(name, PRODUCTION)
        if production == version:
            raise InvalidRequestError(f"version {version} is already production", model=name, version=version)
        warmed = d.warm(name, version)
        previous = releases.current_canary(d.store, name)
        if previous is not None:
            releases.end_canary(d.store, name, "superseded", f"replaced by version {version}", by=by)
        canary = {
            "version": version,
            "mode": mode,
            "share": share if mode == CANARY else 0.0,
            "since": time.time(),
            "by": by,
            "base": production,
            "suites": suites,
        }
        d.redis.delete(RELEASE_PREFIX + name)
        releases.set_canary(d.store, name, canary)
        d.refresh(name)
    log_event(logger, "candidate_started", model=name, version=version, mode=mode, share=share, by=by)
    return {"name": name, "candidate": canary, "warmed": warmed}


def retire(
    d: Deployer, name: str, reason: str, by: str = "admin", numbers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """End the release of the candidate without promoting it: ``aborted`` when an admin asks,
    ``retired`` when the monitor's decision found it worse. NoCandidateError if none runs."""
    with d.locked(name):
        d.store.entry_exists(name)
        if releases.current_canary(d.store, name) is None:
            raise NoCandidateError(f"model {name!r} has no candidate in release", model=name)
        outcome = "aborted" if by == "admin" else "retired"
        record = releases.end_canary(d.store, name, outcome, reason, by=by, numbers=numbers)
        d.refresh(name)
    log_event(logger, "candidate_retired", model=name, version=record["version"], outcome=outcome, reason=reason)
    return {"name": name, "release": record}


def promote_candidate(
    d: Deployer, name: str, reason: str, by: str = "admin", numbers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Promote the running candidate to production (two-phase deploy); NoCandidateError if none."""
    canary = releases.current_canary(d.store, name)
    if canary is None:
        raise NoCandidateError(f"model {name!r} has no candidate in release", model=name)
    return d.promote(name, str(canary["version"]), PRODUCTION, reason=reason, by=by, numbers=numbers)


def set_servable(d: Deployer, name: str, version: str, servable: bool) -> dict[str, Any]:
    """Allow (and warm on every process) or forbid pinning ``name@version``."""
    version = str(version)
    with d.locked(name):
        d.store.check_version(name, version)
        warmed = None
        if servable:
            d.store.verify(name, version)
            warmed = d.warm(name, version)
        versions = releases.set_servable(d.store, name, version, servable)
        d.refresh(name)
    return {"name": name, "version": version, "servable": versions, "warmed": warmed}
