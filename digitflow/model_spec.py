"""What a job asks for and what the registry view says serves it: the ``name@version`` grammar,
the aliases, resolving a view entry to a version, which versions may be pinned, and which jobs
a canary candidate serves. Pure: no Redis, no MLflow."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from digitflow.errors import InvalidRequestError, ModelVersionNotFoundError, VersionNotServableError

PRODUCTION = "production"
CANDIDATE = "candidate"
ALIASES = (PRODUCTION, CANDIDATE)
CANARY, SHADOW = "canary", "shadow"
MODES = (CANARY, SHADOW)
SPEC_RE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,63})(?:@([1-9][0-9]{0,8}))?$")


@dataclass(frozen=True)
class ModelSpec:
    """What a job asks for: ``digits`` (production) or ``digits@3`` (that version)."""

    name: str
    pin: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Raise InvalidRequestError unless ``text`` is ``name`` or ``name@version``."""
        match = SPEC_RE.match(text)
        if match is None:
            raise InvalidRequestError("model must be a lowercase name like 'digits' or 'digits@3'", model=text[:80])
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{self.name}@{self.pin}" if self.pin else self.name


def production_of(entry: dict[str, Any]) -> str | None:
    version = entry.get("aliases", {}).get(PRODUCTION)
    return str(version) if version is not None else None


def canary_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate in release (``{version, mode, share, since, suites, ...}``), or None.

    Only a candidate started through the registry service counts: its record names the same
    version as the ``candidate`` alias."""
    canary = entry.get("canary")
    candidate = entry.get("aliases", {}).get(CANDIDATE)
    if not isinstance(canary, dict) or candidate is None or str(canary.get("version")) != str(candidate):
        return None
    return canary


def servable_versions(entry: dict[str, Any]) -> list[str]:
    """The versions a job may pin: production, the candidate, and what an admin marked servable."""
    out = {str(v) for v in entry.get("servable", [])}
    out |= {str(v) for alias, v in entry.get("aliases", {}).items() if alias in ALIASES}
    return sorted(out, key=int)


def routes_to_candidate(job_id: str, share: float) -> bool:
    """Whether a canary with ``share`` serves this job: a hash of the job id, so a redelivered
    job (same id) always lands on the same version."""
    bucket = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") / 2**64
    return bucket < share


def resolve(entry: dict[str, Any], pin: str | None) -> tuple[str, dict[str, Any]]:
    """The version serving ``pin`` (or production) and its record; ModelVersionNotFoundError if
    none, VersionNotServableError if ``pin`` exists but is not servable (see servable_versions)."""
    version = pin or production_of(entry)
    record = entry.get("versions", {}).get(version) if version else None
    if version is None or record is None:
        what = f"version {pin}" if pin else "a production version"
        raise ModelVersionNotFoundError(
            f"model {entry.get('name')!r} has no {what}", model=entry.get("name"), available=sorted_versions(entry)
        )
    if pin is not None and pin not in servable_versions(entry):
        raise VersionNotServableError(
            f"model {entry.get('name')!r} version {pin} is not servable; an admin can mark it "
            "(digitflow models servable NAME VERSION)",
            model=entry.get("name"),
            servable=servable_versions(entry),
        )
    return version, record


def sorted_versions(entry: dict[str, Any]) -> list[str]:
    return sorted(entry.get("versions", {}), key=int)


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/models/<name>`` and ``digitflow models show`` print (no storage paths)."""
    versions = [
        {k: v for k, v in entry["versions"][ver].items() if k not in {"source", "run_id"}}
        for ver in sorted_versions(entry)
    ]
    return {
        "name": entry["name"],
        "aliases": entry.get("aliases", {}),
        "production": production_of(entry),
        "history": entry.get("history", []),
        "versions": versions,
        "last_deploy": entry.get("deploy"),
        "canary": canary_of(entry),
        "servable": servable_versions(entry),
        "releases": entry.get("releases", []),
        "updated_at": entry.get("updated_at"),
    }
