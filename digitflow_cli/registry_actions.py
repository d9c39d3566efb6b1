"""Registry actions from the command line: by task name through the registry service when one
is alive (as the gateway does), else in this process (the same Deployer, MLflow imported here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from digitflow.redis_client import connect
from digitflow.settings import CoreSettings
from digitflow.tasks import REGISTRY_CANDIDATE, REGISTRY_PROMOTE, REGISTRY_SYNC


def _deployer(settings: CoreSettings) -> Any:
    from digitflow.model_store import RegistryStore
    from registry_worker.deploy import Deployer

    store = RegistryStore(settings.tracking_uri, settings.artifact_root)
    return Deployer(store, connect(settings.redis_url), settings.deploy_timeout_s, settings.heartbeat_ttl_s)


def registry_callbacks(settings: CoreSettings) -> tuple[Callable[[str, str], dict[str, Any]], Callable[[str], None]]:
    """(promote to production, refresh the view of a model): what training needs of the registry."""

    def promote(name: str, version: str) -> dict[str, Any]:
        payload = {"name": name, "version": version, "alias": "production"}
        return registry_action(settings, REGISTRY_PROMOTE, payload, lambda d: d.promote(name, version))

    def registered(name: str) -> None:
        registry_action(settings, REGISTRY_SYNC, {"names": [name]}, lambda d: {"models": d.sync([name])})

    return promote, registered


def release_callback(settings: CoreSettings) -> Callable[[str, str, dict[str, Any]], dict[str, Any]]:
    """What a retrain calls with a version that passed its gate: make it the candidate."""

    def release(name: str, version: str, suites: dict[str, Any]) -> dict[str, Any]:
        from registry_worker.canary import start_candidate

        mode, share = settings.canary_mode, settings.canary_share
        payload = {"name": name, "version": version, "mode": mode, "share": share, "suites": suites, "by": "retrain"}
        return registry_action(
            settings,
            REGISTRY_CANDIDATE,
            payload,
            lambda d: start_candidate(d, name, version, mode, share, suites, "retrain"),
        )

    return release


def registry_action(
    settings: CoreSettings, task: str, payload: dict[str, Any], direct: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """Run a registry action in the registry service if one is alive, else here. Raises its errors."""
    from digitflow.celery_app import make_celery
    from digitflow.registry_client import RegistryClient

    client = RegistryClient(make_celery("cli", settings), settings.redis_url, settings.heartbeat_ttl_s)
    try:
        alive = client.alive()
    except redis.RedisError:
        alive = False
    if alive:
        return client.call(task, payload, timeout_s=settings.deploy_timeout_s * 2 + 30)
    return dict(direct(_deployer(settings)))
