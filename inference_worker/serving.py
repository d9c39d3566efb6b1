"""Which model version serves a job: a per-process LRU cache of loaded versions, registry-aware.

A job names ``model`` (served by its production version) and maybe ``pin`` (that version). The
production version comes from the registry's view in Redis (``df:models``), kept per process
and switched by the deploy watcher (never by a job): the new version is loaded next to the old
one (:meth:`ModelCache.load`), then one locked step (:meth:`ModelCache.switch`) makes it the one
jobs resolve to and drops the old one. A job therefore never waits on a hot swap. Only production
is ever loaded on a job's path (a process's first job); a pinned version (only servable ones may
be pinned, ``digitflow.model_spec.resolve``) or a canary candidate that is cold is loaded by a
background thread while the job gets ``model_loading`` (503, retryable) or, routed by a canary,
production. At most MAX_LOADED_MODELS versions stay in
memory; the least recently used goes first. Files come from the registry into the local model
cache once (``inference_worker.artifacts``). Models the registry does not know (or no registry
at all) are served from the shipped ``MODEL_DIR/<name>/<latest>/``.

Loading happens in the pool process, never before fork (CUDA does not survive fork). A version
that fails to load is not retried on every batch: the failure is remembered for a few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from digitflow.errors import (
    DigitflowError,
    ModelLoadingError,
    ModelNotFoundError,
    ModelUnavailableError,
    ModelVersionNotFoundError,
    VersionNotServableError,
)
from digitflow.model_spec import PRODUCTION, canary_of, resolve
from digitflow.model_view import read_entry
from digitflow.observability import MODEL_EVICTIONS, MODEL_LOADED, MODEL_LOADS, log_event
from digitflow.redis_client import connect
from digitflow.settings import InferenceSettings
from digitnet.loading import LoadedModel, load_model
from inference_worker.artifacts import fetch_version

logger = logging.getLogger("inference_worker.serving")
RETRY_FAILED_LOAD_S = 5.0
RETRY_UNKNOWN_S = 5.0  # a model absent from the registry view is looked up again after this
Key = tuple[str, str]


@dataclass(frozen=True)
class Target:
    key: Key
    source: str
    direct: bool = False  # a local folder used in place (shipped model, override), not a registry copy
    weights_sha256: str | None = None  # the view's: a cached copy with other weights is stale


def latest_version_dir(model_root: Path, name: str) -> Path:
    """The highest numbered version directory of ``name``; ModelNotFoundError if none."""
    base = model_root / name
    versions = sorted((int(p.name), p) for p in base.glob("*") if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ModelNotFoundError(f"no versions of model {name!r} are installed", model=name)  # no path: jobs show it
    return versions[-1][1]


class ModelCache:
    def __init__(self, settings: InferenceSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._client = client
        self._lock = threading.Lock()
        self._loaded: OrderedDict[Key, LoadedModel] = OrderedDict()
        self._entries: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._failures: dict[Key, tuple[float, DigitflowError]] = {}
        self._loading: dict[Key, threading.Lock] = {}
        self._warming: set[Key] = set()

    @property
    def redis(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(self.settings.redis_url, socket_timeout=2.0)
        return self._client

    # -- the job path ----------------------------------------------------------------------
    def get(self, name: str, pin: str | None = None) -> LoadedModel:
        """The loaded version serving ``name`` (or its version ``pin``); loads it if cold.

        Raises ModelNotFoundError / ModelVersionNotFoundError / ModelUnavailableError.
        """
        self._entry(name)
        try:
            target = self._lookup(name, pin)
        except ModelVersionNotFoundError:
            self._entry(name, refresh=True)  # a version registered a moment ago
            target = self._lookup(name, pin)
        except VersionNotServableError:
            self.refresh_entry(name)  # marked servable a moment ago?
            target = self._lookup(name, pin)
        if isinstance(target, LoadedModel):
            return target
        if pin is not None and not target.direct and pin != self.production(name):
            failed = self._failures.get(target.key)
            if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
                raise failed[1]
            self.warm_async(name, pin)
            raise ModelLoadingError(
                f"model {name!r} version {pin} is being loaded; retry in a moment", retry_after=2, model=name
            )
        return self._load(target, keep=True)

    def peek(self, name: str, version: str) -> LoadedModel | None:
        """The loaded ``version`` of ``name``, or None (never loads)."""
        with self._lock:
            return self._loaded.get((name, version))

    def release(self, name: str) -> dict[str, Any] | None:
        """The model's candidate in release (canary_of its entry), as this process knows it."""
        with self._lock:
            entry = self._entries.get(name, (0.0, None))[1]
        return None if entry is None else canary_of(entry)

    def warm_async(self, name: str, version: str) -> None:
        """Load ``version`` into the cache on a background thread (once at a time per version)."""
        key = (name, version)
        with self._lock:
            if key in self._loaded or key in self._warming:
                return
            self._warming.add(key)
            entry = self._entries.get(name, (0.0, None))[1] or {"name": name}
        threading.Thread(target=self._warm, args=(entry, version), name="model-warm", daemon=True).start()

    def _warm(self, entry: dict[str, Any], version: str) -> None:
        try:
            self.warm(self.target(entry, version))
        except DigitflowError:
            pass  # remembered in _failures and logged by _load
        finally:
            with self._lock:
                self._warming.discard((str(entry["name"]), version))

    def warm(self, target: Target) -> LoadedModel:
        """Load a version into the cache (it serves pins and canary jobs, not production)."""
        return self.peek(*target.key) or self._load(target, keep=True)

    def refresh_entry(self, name: str) -> None:
        """Re-read the model's entry (candidate, servable set) keeping this process's production,
        which only a deploy switches."""
        try:
            entry = read_entry(self.redis, name)
        except redis.RedisError:
            return
        with self._lock:
            current = self._entries.get(name, (0.0, None))[1]
            if entry is None or current is None:
                return
            production = current.get("aliases", {}).get(PRODUCTION)
            aliases = {k: v for k, v in entry.get("aliases", {}).items() if k != PRODUCTION}
            if production is not None:
                aliases[PRODUCTION] = production
            self._entries[name] = (time.monotonic(), {**entry, "aliases": aliases})

    def _lookup(self, name: str, pin: str | None) -> LoadedModel | Target:
        with self._lock:  # resolution and lookup in one step: a swap cannot slip in between
            target = self._target(name, pin)
            model = self._loaded.get(target.key)
            if model is None:
                return target
            self._loaded.move_to_end(target.key)
            return model

    def _target(self, name: str, pin: str | None) -> Target:
        override = self.settings.model_path_override
        if override:
            return Target((name, "override"), override, direct=True)
        entry = self._entries.get(name, (0.0, None))[1]
        if entry is not None:
            version, record = resolve(entry, pin)
            return Target((name, version), str(record.get("source")), weights_sha256=record.get("weights_sha256"))
        path = self.settings.model_dir / name / pin if pin else latest_version_dir(self.settings.model_dir, name)
        if not path.is_dir():
            raise ModelVersionNotFoundError(f"model {name!r} has no version {pin}", model=name)
        return Target((name, path.name), str(path), direct=True)

    def _entry(self, name: str, refresh: bool = False) -> dict[str, Any] | None:
        with self._lock:
            known = self._entries.get(name)
        if (
            known is not None
            and not refresh
            and (known[1] is not None or time.monotonic() - known[0] < RETRY_UNKNOWN_S)
        ):
            return known[1]
        try:
            entry = read_entry(self.redis, name)
        except redis.RedisError as exc:  # no registry view reachable: serve what is shipped
            logger.warning("registry view unreadable: %s", exc, extra={"event": "view_unreadable", "model": name})
            entry = None
        with self._lock:
            current = self._entries.get(name)
            # Never replace a version switched in by a deploy with an older read.
            if current is None or current[1] is None or refresh:
                self._entries[name] = (time.monotonic(), entry)
            return self._entries[name][1]

    def _load(self, target: Target, keep: bool) -> LoadedModel:
        name, version = target.key
        with self._lock:
            lock = self._loading.setdefault(target.key, threading.Lock())
        with lock:  # one load per version at a time; others wait for it and share it
            with self._lock:
                model = self._loaded.get(target.key)
                if model is not None:
                    return model
            failed = self._failures.get(target.key)
            if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
                raise failed[1]
            try:
                path = Path(target.source) if target.direct else self._fetch(target)
                model = load_model(path, device=self.settings.device, threads=self.settings.torch_threads)
            except Exception as exc:
                err = (
                    exc
                    if isinstance(exc, DigitflowError)
                    else ModelUnavailableError(
                        f"model {name!r} version {version} could not be loaded: {type(exc).__name__}", model=name
                    )
                )
                self._failures[target.key] = (time.monotonic(), err)
                MODEL_LOADS.labels(name, "failed").inc()
                log_event(
                    logger,
                    "model_load_failed",
                    logging.ERROR,
                    model=name,
                    version=version,
                    error_code=err.code,
                    error=f"{err.message} ({type(exc).__name__}: {str(exc)[:300]})",  # the job shows only the code
                )
                raise err from exc
            self._failures.pop(target.key, None)
            if not target.direct:
                model.name, model.version = name, version  # the registry's numbering is authoritative
            MODEL_LOADS.labels(name, "loaded").inc()
            log_event(logger, "model_loaded", model=name, version=model.version, device=str(model.device))
            if keep:
                self._install(target.key, model)
            return model

    def _fetch(self, target: Target) -> Path:
        s = self.settings
        key = target.key
        return fetch_version(s.model_cache_dir, s.tracking_uri, key[0], key[1], target.source, target.weights_sha256)

    def _install(
        self, key: Key, model: LoadedModel, entry: dict[str, Any] | None = None, drop: Key | None = None
    ) -> None:
        """Add a loaded version (and, for a deploy, switch the model's entry and drop the old
        version) in one locked step, then evict least recently used versions over the limit."""
        with self._lock:
            self._loaded[key] = model
            self._loaded.move_to_end(key)
            MODEL_LOADED.labels(key[0], key[1]).set(1)
            if entry is not None:
                self._entries[key[0]] = (time.monotonic(), entry)
            if drop is not None and drop != key and self._loaded.pop(drop, None) is not None:
                self._evicted(drop, "replaced")
            while len(self._loaded) > self.settings.max_loaded_models:
                old, _ = self._loaded.popitem(last=False)
                self._evicted(old, "lru")

    def _evicted(self, key: Key, why: str) -> None:
        MODEL_EVICTIONS.labels(key[0]).inc()
        MODEL_LOADED.labels(key[0], key[1]).set(0)
        log_event(logger, "model_evicted", model=key[0], version=key[1], reason=why)

    # -- the deploy path (deploy watcher thread) -------------------------------------------
    def knows(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    def production(self, name: str) -> str | None:
        with self._lock:
            entry = self._entries.get(name, (0.0, None))[1]
        return None if entry is None else entry.get("aliases", {}).get("production")

    def loaded(self) -> list[Key]:
        with self._lock:
            return list(self._loaded)

    def target(self, entry: dict[str, Any], version: str) -> Target:
        """Where ``version`` of the model of ``entry`` comes from (ModelVersionNotFoundError if absent)."""
        record = entry.get("versions", {}).get(version)
        if record is None:
            raise ModelVersionNotFoundError(f"{entry.get('name')} version {version} is not in the registry view")
        return Target(
            (str(entry["name"]), version), str(record.get("source")), weights_sha256=record.get("weights_sha256")
        )

    def load(self, target: Target) -> LoadedModel:
        """Load a version without making it serve (the deploy path's "next to the old one")."""
        with self._lock:
            model = self._loaded.get(target.key)
        return model if model is not None else self._load(target, keep=False)

    def switch(self, entry: dict[str, Any], version: str, model: LoadedModel) -> tuple[str | None, bool]:
        """Make the loaded ``model`` the version jobs of its model get, in one locked step that
        also drops the version it replaces; returns (that version, whether it was serving here).

        A model this process never served is only load-tested, unless there is room for it.
        """
        name = str(entry["name"])
        with self._lock:
            old = self._entries.get(name, (0.0, None))[1]
            old_version = None if old is None else old.get("aliases", {}).get("production")
            serving = any(k[0] == name for k in self._loaded)
            room = len(self._loaded) < self.settings.max_loaded_models
        if serving or room:
            drop = (name, str(old_version)) if old_version and old_version != version else None
            self._install((name, version), model, entry, drop)
        else:
            with self._lock:
                self._entries[name] = (time.monotonic(), entry)
        return old_version, serving


# Re-exported: the inference task and tests call serving.infer_items.
from inference_worker.routing import infer_items  # noqa: E402

__all__ = ["Key", "ModelCache", "Target", "infer_items", "latest_version_dir"]
