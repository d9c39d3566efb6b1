"""Each inference process's deploy watcher: hears promotions and switches without a restart.

One thread per pool process (started after the fork) subscribes to ``df:deploy``. A promotion
comes in two phases: ``prepare`` loads the new version next to the one serving (jobs keep
using the old one meanwhile), ``commit`` swaps it in with one locked step (``abort`` drops it).
Each phase is answered in ``df:deploy:<id>:<phase>``, so the registry knows that every process
loaded the version before any of them switches, or which process could not load it and why
(then nothing switches anywhere). Two more phases serve canary releases: ``warm`` loads a
version into the cache (a candidate, a version marked servable) and answers, ``refresh`` re-reads
a model's entry (candidate, servable set) without touching production. Every DEPLOY_RECHECK_S
the watcher also compares production versions with ``df:models:production`` and re-reads the
entries, which catches a message missed while Redis was away.
It beats in ``df:workers:model-servers`` so that a promotion knows which processes to wait for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from digitflow.deploy_protocol import DEPLOY_CHANNEL, SERVERS, write_ack
from digitflow.errors import DigitflowError
from digitflow.keys import workers
from digitflow.model_view import read_entry, read_production
from digitflow.observability import MODEL_DEPLOYS, MODEL_SWAP_SECONDS, log_event
from digitflow.redis_client import connect
from digitflow.settings import InferenceSettings
from digitnet.loading import LoadedModel
from inference_worker.serving import Key, ModelCache

logger = logging.getLogger("inference_worker.deploy")


class HotSwapper:
    """Prepare (load next to the old one), commit (swap) and abort, for one process's cache."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache
        self._staged: dict[Key, LoadedModel] = {}

    def prepare(self, name: str, version: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            entry = read_entry(self.cache.redis, name) or {"name": name}
            self._staged[(name, version)] = self.cache.load(self.cache.target(entry, version))
        except DigitflowError as exc:
            MODEL_DEPLOYS.labels(name, "failed").inc()
            log_event(logger, "model_deploy_failed", logging.ERROR, model=name, version=version, error_code=exc.code)
            return {"ok": False, "code": exc.code, "error": exc.message}
        return {"ok": True, "load_ms": round((time.perf_counter() - started) * 1000, 3)}

    def commit(self, name: str, version: str) -> dict[str, Any]:
        """Swap the prepared version in (loading it first if this process missed the prepare)."""
        started = time.perf_counter()
        model = self._staged.pop((name, version), None)
        entry = read_entry(self.cache.redis, name) or {"name": name}
        if model is None:
            prepared = self.prepare(name, version)
            if not prepared["ok"]:
                return prepared
            model = self._staged.pop((name, version))
        previous, serving = self.cache.switch(entry, version, model)
        seconds = time.perf_counter() - started
        MODEL_DEPLOYS.labels(name, "swapped").inc()
        MODEL_SWAP_SECONDS.observe(seconds)
        log_event(logger, "model_swapped", model=name, version=version, duration_ms=round(seconds * 1000, 3))
        return {"ok": True, "previous": previous, "swap_ms": round(seconds * 1000, 3), "was_serving": serving}

    def abort(self, name: str, version: str) -> dict[str, Any]:
        self._staged.pop((name, version), None)
        return {"ok": True}

    def warm(self, name: str, version: str) -> dict[str, Any]:
        """Load ``version`` into the cache, where it serves pins and canary jobs (not production)."""
        started = time.perf_counter()
        try:
            entry = read_entry(self.cache.redis, name) or {"name": name}
            self.cache.warm(self.cache.target(entry, version))
        except DigitflowError as exc:
            log_event(logger, "model_warm_failed", logging.ERROR, model=name, version=version, error_code=exc.code)
            return {"ok": False, "code": exc.code, "error": exc.message}
        return {"ok": True, "load_ms": round((time.perf_counter() - started) * 1000, 3)}

    def refresh(self, name: str, version: str) -> dict[str, Any]:
        self.cache.refresh_entry(name)
        return {"ok": True}


class DeployWatcher:
    def __init__(self, cache: ModelCache, settings: InferenceSettings, name: str | None = None) -> None:
        self.cache, self.settings = cache, settings
        self.swapper = HotSwapper(cache)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.client = connect(settings.redis_url, socket_timeout=5.0)

    def start(self) -> None:
        """Start the thread once (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deploy-watcher", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(workers(SERVERS), self.name)

    def _run(self) -> None:
        listener = connect(self.settings.redis_url, socket_timeout=None)  # type: ignore[arg-type]
        while not self._stop.is_set():
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(DEPLOY_CHANNEL)
                self.beat()
                self.recheck()  # whatever moved while we were not listening
                last_beat = last_check = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self.on_deploy(json.loads(message["data"]))
                    now = time.monotonic()
                    if now - last_beat >= self.settings.heartbeat_interval_s:
                        self.beat()
                        last_beat = now
                    if now - last_check >= self.settings.deploy_recheck_s:
                        self.recheck()
                        last_check = time.monotonic()
            except (redis.RedisError, OSError, ValueError) as exc:
                logger.warning("deploy watcher lost Redis: %s", exc, extra={"event": "deploy_watcher_reconnect"})
                self._stop.wait(1.0)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()

    def beat(self) -> None:
        self.client.zadd(workers(SERVERS), {self.name: time.time()})

    def on_deploy(self, message: dict[str, Any]) -> None:
        """Run one phase of a deploy and answer the promotion that announced it."""
        name, version, deploy_id = str(message["name"]), str(message["version"]), str(message.get("id") or "")
        phase = str(message.get("phase") or "commit")
        self.beat()
        try:
            action = {
                "prepare": self.swapper.prepare,
                "commit": self.swapper.commit,
                "abort": self.swapper.abort,
                "warm": self.swapper.warm,
                "refresh": self.swapper.refresh,
            }[phase]
            ack = action(name, version)
        except Exception as exc:  # never let one deploy kill the watcher; report it instead
            logger.exception("deploy crashed", extra={"event": "deploy_crashed", "model": name})
            ack = {"ok": False, "code": "internal_error", "error": f"{type(exc).__name__}: {exc}"[:300]}
        if deploy_id and phase not in ("abort", "refresh"):
            write_ack(self.client, f"{deploy_id}:{phase}", self.name, {**ack, "at": time.time()})
        self.beat()

    def recheck(self) -> None:
        """Switch every model whose production version differs from this process's (a missed
        commit), and re-read the entries of the others (a missed candidate or servable change)."""
        for name, (version, deploy_id) in read_production(self.client).items():
            if self.cache.knows(name) and self.cache.production(name) == version:
                self.cache.refresh_entry(name)
            elif self.cache.knows(name):
                logger.info(
                    "switching %s to %s on the periodic check", name, version, extra={"event": "deploy_caught_up"}
                )
                self.on_deploy({"name": name, "version": version, "id": deploy_id, "phase": "commit"})
