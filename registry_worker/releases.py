"""Where the canary state lives in the registry: tags of the registered model in MLflow.

The registry is the source of truth, so a restarted registry service (or a sync from another
one) rebuilds the same view. Three tags of the registered model, each JSON:

* ``digitflow.canary``: the candidate in release ``{version, mode, share, since, by, base,
  suites}``; it counts only while the ``candidate`` alias names the same version
  (``digitflow.model_spec.canary_of``);
* ``digitflow.servable``: versions an admin allowed jobs to pin (besides production and the
  candidate);
* ``digitflow.releases``: the last RELEASES_KEPT outcomes (promoted, retired, aborted) with
  their reason and the numbers they were decided on.

A version's evaluation-suite results are also a tag of that version (``digitflow.suites``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from digitflow.model_spec import CANDIDATE
from digitflow.model_store import RegistryStore

CANARY_TAG = "digitflow.canary"
SERVABLE_TAG = "digitflow.servable"
RELEASES_TAG = "digitflow.releases"
SUITES_TAG = "digitflow.suites"
RELEASES_KEPT = 20  # a tag value holds a few thousand characters at most


def _tags(store: RegistryStore, name: str) -> dict[str, str]:
    return dict(store.client.get_registered_model(name).tags or {})


def decorate(store: RegistryStore, entry: dict[str, Any]) -> dict[str, Any]:
    """Add the canary, servable and releases records of the model's tags to its view entry."""
    tags = _tags(store, entry["name"])
    entry["canary"] = json.loads(tags.get(CANARY_TAG, "null"))
    entry["servable"] = [str(v) for v in json.loads(tags.get(SERVABLE_TAG, "[]"))]
    entry["releases"] = json.loads(tags.get(RELEASES_TAG, "[]"))
    return entry


def set_canary(store: RegistryStore, name: str, canary: dict[str, Any]) -> None:
    """Record ``canary`` and point the ``candidate`` alias at its version."""
    store.client.set_registered_model_tag(name, CANARY_TAG, json.dumps(canary))
    if canary.get("suites") is not None:
        store.client.set_model_version_tag(name, canary["version"], SUITES_TAG, json.dumps(canary["suites"]))
    store.set_alias(name, CANDIDATE, canary["version"])


def current_canary(store: RegistryStore, name: str) -> dict[str, Any] | None:
    canary = json.loads(_tags(store, name).get(CANARY_TAG, "null"))
    if not isinstance(canary, dict) or store.alias(name, CANDIDATE) != str(canary.get("version")):
        return None
    return canary


def end_canary(store: RegistryStore, name: str, outcome: str, reason: str, **extra: Any) -> dict[str, Any]:
    """Remove the candidate (alias and record) and append the outcome to the releases; returns it."""
    canary = current_canary(store, name) or {}
    record = {
        "version": canary.get("version") or store.alias(name, CANDIDATE),
        "mode": canary.get("mode"),
        "share": canary.get("share"),
        "since": canary.get("since"),
        "outcome": outcome,
        "reason": reason[:500],
        "at": time.time(),
        **extra,
    }
    tags = _tags(store, name)
    releases = [*json.loads(tags.get(RELEASES_TAG, "[]")), record][-RELEASES_KEPT:]
    store.client.set_registered_model_tag(name, RELEASES_TAG, json.dumps(releases))
    if CANARY_TAG in tags:
        store.client.delete_registered_model_tag(name, CANARY_TAG)
    if store.alias(name, CANDIDATE) is not None:
        store.set_alias(name, CANDIDATE, None)
    return record


def set_servable(store: RegistryStore, name: str, version: str, servable: bool) -> list[str]:
    """Add or remove ``version`` from the model's servable set; returns the new set."""
    current = {str(v) for v in json.loads(_tags(store, name).get(SERVABLE_TAG, "[]"))}
    current = current | {version} if servable else current - {version}
    ordered = sorted(current, key=int)
    store.client.set_registered_model_tag(name, SERVABLE_TAG, json.dumps(ordered))
    return ordered
