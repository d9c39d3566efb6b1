"""Tasks of the registry service: ``registry.promote``, ``registry.rollback``, ``registry.sync``,
and for canary releases ``registry.candidate``, ``registry.retire``, ``registry.servable``.

Each request carries a ``request_id``; the outcome goes to ``df:registry:reply:<request_id>``
(the caller waits on it). Requests are acknowledged on receipt and deduplicated by id, so a
promotion never runs twice. On start the service registers the shipped models if the registry
is empty and writes the view; then it re-reads the registry every REGISTRY_SYNC_S, so an alias
moved elsewhere (e.g. in the MLflow UI) is deployed too.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, signals

from digitflow.deploy_protocol import publish_deploy
from digitflow.errors import DigitflowError
from digitflow.keys import REGISTRY_SEEN_PREFIX
from digitflow.model_store import RegistryStore
from digitflow.model_view import read_production, write_entries
from digitflow.observability import log_event
from digitflow.redis_client import claim, connect
from digitflow.registry_client import send_reply
from digitflow.settings import RegistrySettings
from digitflow.store_identity import MLFLOW, bind, log_binding, redis_store_id
from digitflow.tasks import (
    REGISTRY_CANDIDATE,
    REGISTRY_PROMOTE,
    REGISTRY_RETIRE,
    REGISTRY_ROLLBACK,
    REGISTRY_SERVABLE,
    REGISTRY_SYNC,
)
from registry_worker import canary
from registry_worker.deploy import Deployer

logger = logging.getLogger("registry_worker")


class RegistryService:
    """The process's registry store, Redis client and deployer, created after start."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self._deployer: Deployer | None = None
        self._stop = threading.Event()

    @property
    def deployer(self) -> Deployer:
        if self._deployer is None:
            s = self.settings
            store = RegistryStore(s.tracking_uri, s.artifact_root)
            self._deployer = Deployer(store, connect(s.redis_url), s.deploy_timeout_s, s.heartbeat_ttl_s)
        return self._deployer

    def handle(self, request: dict[str, Any], action: Callable[[Deployer], dict[str, Any]]) -> None:
        """Run ``action`` once per request id and reply with its result or its error."""
        request_id = str(request.get("request_id") or uuid.uuid4().hex)
        client = self.deployer.redis
        if not claim(client, REGISTRY_SEEN_PREFIX + request_id, 3600):
            return  # a duplicate delivery: the first one answered
        try:
            with self.lock:
                result = action(self.deployer)
            send_reply(client, request_id, {"ok": True, "result": result})
        except DigitflowError as exc:
            log_event(
                logger, "registry_request_failed", logging.WARNING, error_code=exc.code, model=request.get("name")
            )
            send_reply(client, request_id, {"ok": False, "error": exc.to_dict()})
        except Exception as exc:  # an MLflow or Redis failure: answer rather than leave the caller waiting
            logger.exception("registry request crashed", extra={"event": "registry_request_crashed"})
            body = {"code": "internal_error", "message": f"registry failed: {type(exc).__name__}: {exc}"[:500]}
            send_reply(client, request_id, {"ok": False, "error": body})

    def start(self) -> None:
        """Bootstrap and write the view now, then keep it in step with the registry."""
        self.refresh(bootstrap=self.settings.bootstrap)
        threading.Thread(target=self._loop, name="registry-sync", daemon=True).start()

    def refresh(self, bootstrap: bool = False) -> None:
        try:
            with self.lock:
                if bootstrap:
                    done = self.deployer.store.bootstrap(self.settings.model_dir)
                    if done:
                        log_event(logger, "registry_bootstrapped", models=done)
                reset = self._check_store()
                # After a reset the old production versions were another store's: nothing "moved".
                before = {} if reset else read_production(self.deployer.redis)
                entries = self.deployer.sync(fresh=reset)
                self._deploy_moved(before, entries)
        except (DigitflowError, redis.RedisError, OSError) as exc:
            logger.warning("registry sync failed: %s", exc, extra={"event": "registry_sync_failed"})
        except Exception:  # MLflow errors have no common base worth importing here
            logger.exception("registry sync failed", extra={"event": "registry_sync_failed"})

    def _check_store(self) -> bool:
        """Tie the Redis state that names MLflow versions to this MLflow store; True when it was
        another store's and was reset (the view is then rewritten from scratch by the caller)."""
        client = self.deployer.redis
        binding = bind(client, MLFLOW, self.deployer.store.store_id())
        if binding.outcome != "same":
            view = "rewritten from this store" if binding.outcome == "reset" else "kept"
            log_binding(logger, binding, redis_store_id=redis_store_id(client), registry_view=view)
        return binding.outcome == "reset"

    def _deploy_moved(self, before: dict[str, tuple[str, str]], entries: list[dict[str, Any]]) -> None:
        """Publish a deploy for every production alias that moved without us (MLflow UI, API)."""
        for entry in entries:
            version = entry["aliases"].get("production")
            old = before.get(entry["name"])
            if version is None or old is None or old[0] == version:
                continue
            deploy_id = uuid.uuid4().hex[:16]
            entry["deploy"] = {"id": deploy_id, "version": version, "at": time.time(), "by": "sync"}
            write_entries(self.deployer.redis, [entry])
            publish_deploy(self.deployer.redis, entry["name"], version, deploy_id)
            log_event(logger, "alias_moved_elsewhere", model=entry["name"], version=version, deploy_id=deploy_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.registry_sync_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()


def register_tasks(app: Celery, settings: RegistrySettings) -> None:
    service = RegistryService(settings)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        service.start()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        service.stop()

    @app.task(name=REGISTRY_PROMOTE, acks_late=False)
    def promote(request: dict[str, Any]) -> None:
        """``{name, version, alias}``, or ``{name, candidate: true}`` for the running candidate."""
        name, version = str(request.get("name")), str(request.get("version"))
        alias = str(request.get("alias") or "production")
        by, reason = str(request.get("by") or "admin"), str(request.get("reason") or "")
        numbers = request.get("numbers") if isinstance(request.get("numbers"), dict) else None
        if request.get("candidate"):
            reason = reason or f"promoted by {by}"
            service.handle(request, lambda d: canary.promote_candidate(d, name, reason, by, numbers))
        else:
            service.handle(request, lambda d: d.promote(name, version, alias, reason, by, numbers))

    @app.task(name=REGISTRY_CANDIDATE, acks_late=False)
    def candidate(request: dict[str, Any]) -> None:
        """``{name, version, mode, share, suites?, by?}``: start a canary (or shadow) release."""
        name, version = str(request.get("name")), str(request.get("version"))
        mode = str(request.get("mode") or settings.canary_mode)
        suites = request.get("suites") if isinstance(request.get("suites"), dict) else None

        def run(d: Deployer) -> dict[str, Any]:
            share = float(request.get("share") or settings.canary_share)
            return canary.start_candidate(d, name, version, mode, share, suites, str(request.get("by") or "admin"))

        service.handle(request, run)

    @app.task(name=REGISTRY_RETIRE, acks_late=False)
    def retire(request: dict[str, Any]) -> None:
        """``{name, reason, by?, numbers?}``: end the candidate's release without promoting it."""
        name, reason = str(request.get("name")), str(request.get("reason") or "aborted by an admin")
        numbers = request.get("numbers") if isinstance(request.get("numbers"), dict) else None
        service.handle(request, lambda d: canary.retire(d, name, reason, str(request.get("by") or "admin"), numbers))

    @app.task(name=REGISTRY_SERVABLE, acks_late=False)
    def servable(request: dict[str, Any]) -> None:
        """``{name, version, servable}``: allow (and warm) or forbid pinning that version."""
        name, version = str(request.get("name")), str(request.get("version"))
        service.handle(request, lambda d: canary.set_servable(d, name, version, bool(request.get("servable", True))))

    @app.task(name=REGISTRY_ROLLBACK, acks_late=False)
    def rollback(request: dict[str, Any]) -> None:
        name = str(request.get("name"))
        service.handle(request, lambda d: d.rollback(name))

    @app.task(name=REGISTRY_SYNC, acks_late=False)
    def sync(request: dict[str, Any]) -> None:
        names = request.get("names")

        def run(d: Deployer) -> dict[str, Any]:
            entries = d.sync(list(names) if names else None)
            return {"models": [e["name"] for e in entries]}

        service.handle(request, run)
