"""Which model version serves a job: a per-process LRU cache of loaded versions, registry-aware.

A job names ``model`` (served by its production version) and maybe ``pin`` (that version). The
production version comes from the registry's view in Redis (``df:models``), kept per process
and switched by the deploy watcher (never by a job): the new version is loaded next to the old
one (:meth:`ModelCache.load`), then one locked step (:meth:`ModelCache.switch`) makes it the one
jobs resolve to and drops the old one. A job therefore never waits on a hot swap; only a version no process
has loaded yet (cold) is loaded on the job's path. At most MAX_LOADED_MODELS versions stay in
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from digitflow.errors import DigitflowError, ModelNotFoundError, ModelUnavailableError, ModelVersionNotFoundError
from digitflow.messages import Item
from digitflow.model_spec import resolve
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


def latest_version_dir(model_root: Path, name: str) -> Path:
    """The highest numbered version directory of ``name``; ModelNotFoundError if none."""
    base = model_root / name
    versions = sorted((int(p.name), p) for p in base.glob("*") if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ModelNotFoundError(f"no versions of model {name!r} under {base}", model=name)
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
        if isinstance(target, LoadedModel):
            return target
        return self._load(target, keep=True)

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
            return Target((name, version), str(record.get("source")))
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
                log_event(logger, "model_load_failed", logging.ERROR, model=name, version=version, error_code=err.code)
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
        return fetch_version(s.model_cache_dir, s.tracking_uri, target.key[0], target.key[1], target.source)

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
        return Target((str(entry["name"]), version), str(record.get("source")))

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


def infer_items(items: Sequence[Item], cache: ModelCache) -> list[Item | DigitflowError]:
    """One forward pass per model version in the batch; a model that fails fails its jobs only.

    Each output names the one version that computed it."""
    out: list[Item | DigitflowError | None] = [None] * len(items)
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item["model"], item.get("pin") or None), []).append(i)
    for (name, pin), idx in groups.items():
        try:
            model = cache.get(name, pin)
            logits, feats = model.predict_with_features([items[i]["pixels"] for i in idx])
        except DigitflowError as exc:
            for i in idx:
                out[i] = exc
            continue
        ref = model.reference
        scores = ref.scores(feats) if ref is not None else None
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
    return [o for o in out if o is not None]
