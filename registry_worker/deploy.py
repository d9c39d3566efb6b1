"""Promotion and rollback: move an alias in the registry and deploy it to every inference
process, in two phases, so that nothing switches unless every process could load the version.

A promotion (``production``) goes:
1. the version exists and its files are intact (sha256 against model.json, no torch): else
   ``model_version_invalid`` and nothing changes;
2. the view is refreshed so that every process finds the version's files;
3. ``prepare``: every live inference process (``df:workers:model-servers``) loads the version
   next to the one it serves and answers in ``df:deploy:<id>:prepare``; the wait is bounded
   (DEPLOY_TIMEOUT_S). If one could not load it (or did not answer), ``abort`` is published and
   the promotion fails with ``deploy_failed`` (``deploy_timeout``) naming the processes and their
   errors: nothing was switched anywhere, the alias never moved;
4. ``commit``: the alias moves in MLflow, the production history grows, the Redis view is
   rewritten, and every process swaps to the loaded version in one locked step and answers.
A process that stops beating while we wait is no longer waited for.
A candidate (``registry_worker.canary``) is warmed the same way (``warm``: every process loads
it into its cache, or nothing changes) before the view names it; ``refresh`` then tells every
process to re-read the model's entry (canary, servable set) without touching production.
Promoting the candidate to production ends its release as ``promoted``; any other production
change ends it as ``superseded``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from redis.exceptions import LockError

from digitflow.deploy_protocol import SERVERS, publish_deploy, read_acks
from digitflow.errors import DeployFailedError, DeployTimeoutError, InvalidRequestError, NoPreviousVersionError
from digitflow.heartbeat import live_workers
from digitflow.keys import REGISTRY_LOCK_PREFIX
from digitflow.model_spec import ALIASES, CANDIDATE, PRODUCTION
from digitflow.model_store import RegistryStore
from digitflow.model_view import read_entry, write_entries
from digitflow.observability import log_event
from registry_worker import releases

logger = logging.getLogger("registry_worker.deploy")


class Deployer:
    """Promotes and rolls back with one registry store and one Redis client."""

    def __init__(
        self, store: RegistryStore, client: redis.Redis, timeout_s: float = 20.0, heartbeat_ttl_s: float = 10.0
    ) -> None:
        self.store, self.redis = store, client
        self.timeout_s, self.heartbeat_ttl_s = timeout_s, heartbeat_ttl_s
        # The release a running promotion ends (reason, by, numbers), applied when the alias
        # moves, so the view never shows the new production beside a finished candidate.
        self._ending: dict[str, tuple[str, str, dict[str, Any] | None]] = {}
        self._ended: dict[str, dict[str, Any] | None] = {}

    def sync(self, names: list[str] | None = None, fresh: bool = False) -> list[dict[str, Any]]:
        """Rewrite the Redis view from the registry (all models, or ``names``); keeps each
        model's last deploy record while its production version is unchanged, unless ``fresh``
        (the view described another MLflow store: its deploys were of other models)."""
        entries = [self.store.entry(n) for n in names] if names is not None else self.store.entries()
        for entry in entries:
            releases.decorate(self.store, entry)
            old = {} if fresh else read_entry(self.redis, entry["name"]) or {}
            deploy = old.get("deploy")
            if deploy and deploy.get("version") == entry["aliases"].get(PRODUCTION):
                entry["deploy"] = deploy
        write_entries(self.redis, entries, replace=names is None)
        return entries

    def sync_one(self, name: str) -> dict[str, Any]:
        return self.sync([name])[0]

    def promote(
        self,
        name: str,
        version: str,
        alias: str = PRODUCTION,
        reason: str = "",
        by: str = "admin",
        numbers: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make ``version`` the ``alias`` of ``name``; see the module doc for the steps and errors.

        ``candidate`` starts a canary release with the default mode and share
        (``registry_worker.canary.start_candidate``)."""
        if alias not in ALIASES:
            raise InvalidRequestError(f"alias must be one of {', '.join(ALIASES)}", alias=alias)
        version = str(version)
        if alias == CANDIDATE:
            from registry_worker.canary import start_candidate

            return start_candidate(self, name, version, by=by)
        with self.locked(name):
            self.store.check_version(name, version)
            self.store.verify(name, version)
            previous = self.store.alias(name, alias)
            history = self.store.history(name)
            if previous == version:
                self.sync([name])
                return {"name": name, "version": version, "previous": previous, "unchanged": True}
            self._ending[name] = (reason or f"promoted by {by}", by, numbers)
            try:
                outcome = self._switch(name, version, previous, [*history, version], history)
            finally:
                self._ending.pop(name, None)
                release = self._ended.pop(name, None)
            outcome["release"] = release
            return outcome

    def rollback(self, name: str) -> dict[str, Any]:
        """Go back to the production version before the current one (NoPreviousVersionError if none)."""
        with self.locked(name):
            self.store.entry_exists(name)
            history = self.store.history(name)
            current = self.store.alias(name, PRODUCTION)
            if len(history) < 2:
                raise NoPreviousVersionError(f"model {name!r} has no earlier production version", model=name)
            target = history[-2]
            self.store.verify(name, target)
            try:
                outcome = self._switch(name, target, current, history[:-1], history)
            finally:
                release = self._ended.pop(name, None)
            outcome["release"] = release
            return {**outcome, "rolled_back_from": current}

    def warm(self, name: str, version: str) -> dict[str, Any]:
        """Every live inference process loads ``version`` into its cache (off any job's path)
        and answers; DeployFailedError / DeployTimeoutError if one could not."""
        servers = set(live_workers(self.redis, self.heartbeat_ttl_s, [SERVERS])[SERVERS])
        deploy_id = uuid.uuid4().hex[:16]
        self.sync([name])  # the view knows the version's files before anyone loads it
        publish_deploy(self.redis, name, version, deploy_id, "warm")
        acks, failed, pending = self._wait(f"{deploy_id}:warm", servers)
        if failed or pending:
            errors = {s: acks[s].get("error") for s in failed} or {s: "no answer" for s in sorted(pending)}
            cls = DeployFailedError if failed else DeployTimeoutError
            raise cls(
                f"{len(errors)} of {len(servers)} inference processes could not load {name} version {version}",
                model=name,
                version=version,
                errors=errors,
                deploy_id=deploy_id,
            )
        return {"servers": sorted(servers), "load_ms": {s: a.get("load_ms") for s, a in acks.items()}}

    def refresh(self, name: str) -> None:
        """Rewrite the model's view entry and tell every process to re-read it (canary, servable)."""
        entry = self.sync([name])[0]
        publish_deploy(self.redis, name, str(entry["aliases"].get(PRODUCTION) or ""), "", "refresh")

    def _end_release(self, name: str, version: str) -> None:
        """A production change ends a running canary: ``promoted`` if it is the candidate."""
        reason, by, numbers = self._ending.pop(name, ("rolled back", "admin", None))
        canary = releases.current_canary(self.store, name)
        if canary is None:
            self._ended[name] = None
            return
        promoted = str(canary.get("version")) == version
        outcome, why = ("promoted", reason) if promoted else ("superseded", f"{reason}: production is now {version}")
        record = releases.end_canary(self.store, name, outcome, why, by=by, numbers=numbers)
        log_event(logger, "release_ended", model=name, version=record["version"], outcome=record["outcome"])
        self._ended[name] = record

    # -- internals -------------------------------------------------------------------------
    def _switch(
        self, name: str, version: str, previous: str | None, history: list[str], old_history: list[str]
    ) -> dict[str, Any]:
        started = time.monotonic()
        servers = set(live_workers(self.redis, self.heartbeat_ttl_s, [SERVERS])[SERVERS])
        deploy_id = uuid.uuid4().hex[:16]
        self.sync([name])  # the view knows the version (and where its files are) before anyone loads it
        publish_deploy(self.redis, name, version, deploy_id, "prepare")
        loaded, failed, pending = self._wait(f"{deploy_id}:prepare", servers)
        if failed or pending:
            publish_deploy(self.redis, name, version, deploy_id, "abort")
            errors = {s: loaded[s].get("error") for s in failed} or {s: "no answer" for s in sorted(pending)}
            log_event(logger, "deploy_aborted", logging.ERROR, model=name, version=version, deploy_id=deploy_id)
            cls = DeployFailedError if failed else DeployTimeoutError
            raise cls(
                f"{len(errors)} of {len(servers)} inference processes could not load {name} version {version} "
                f"({'failed' if failed else f'no answer within {self.timeout_s:g} s'}); production stays at "
                f"version {previous}",
                model=name,
                version=version,
                production=previous,
                errors=errors,
                deploy_id=deploy_id,
            )
        self._move(name, version, history, deploy_id)
        swapped, failed, pending = self._wait(f"{deploy_id}:commit", servers)
        if failed:  # only a process that missed the prepare can fail here; nothing else serves it
            self._move(name, previous, old_history, uuid.uuid4().hex[:16])
            errors = {s: swapped[s].get("error") for s in failed}
            raise DeployFailedError(
                f"{len(failed)} inference processes could not switch to {name} version {version}; "
                f"production is back at version {previous}",
                model=name,
                version=version,
                production=previous,
                errors=errors,
                deploy_id=deploy_id,
            )
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        log_event(
            logger,
            "deployed",
            model=name,
            version=version,
            deploy_id=deploy_id,
            duration_ms=elapsed_ms,
            servers=len(servers),
            lagging=len(pending),
        )
        return {
            "name": name,
            "version": version,
            "previous": previous,
            "deploy_id": deploy_id,
            "servers": sorted(servers),
            "elapsed_ms": elapsed_ms,
            "load_ms": {s: ack.get("load_ms") for s, ack in loaded.items()},
            "swap_ms": {s: ack.get("swap_ms") for s, ack in swapped.items()},
            # Processes that loaded it but had not confirmed the switch yet: they switch on their
            # next periodic check at the latest.
            "lagging": sorted(pending),
        }

    def _move(self, name: str, version: str | None, history: list[str], deploy_id: str) -> None:
        """Point production at ``version`` in MLflow and the view, then publish the commit."""
        self.store.set_alias(name, PRODUCTION, version)
        self.store.set_history(name, history)
        if version is not None and name not in self._ended:
            self._end_release(name, version)  # once per switch: a revert keeps the record
        entry = releases.decorate(self.store, self.store.entry(name))
        entry["deploy"] = {"id": deploy_id, "version": version, "at": time.time()}
        write_entries(self.redis, [entry])
        if version is not None:
            publish_deploy(self.redis, name, version, deploy_id, "commit")

    def _wait(self, deploy_id: str, servers: set[str]) -> tuple[dict[str, dict[str, Any]], list[str], set[str]]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            acks = read_acks(self.redis, deploy_id)
            failed = sorted(s for s, ack in acks.items() if not ack.get("ok"))
            alive = set(live_workers(self.redis, self.heartbeat_ttl_s, [SERVERS])[SERVERS])
            pending = {s for s in servers if s not in acks and s in alive}
            if failed or not pending or time.monotonic() > deadline:
                return acks, failed, pending
            time.sleep(0.05)

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """One promotion per model at a time, across registry services and CLIs: redis-py's
        Lock (token-checked release in Lua, so an expired holder never frees another's lock)."""
        ttl_s = int(self.timeout_s * 3 + 60)
        lock = self.redis.lock(REGISTRY_LOCK_PREFIX + name, timeout=ttl_s, blocking_timeout=ttl_s, thread_local=False)
        if not lock.acquire():
            raise DeployTimeoutError("another promotion of this model is still running", model=name)
        try:
            yield
        finally:
            with contextlib.suppress(LockError):  # expired meanwhile: nothing of ours to release
                lock.release()
