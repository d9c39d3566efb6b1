"""Each version's reference (``reference.safetensors``), fetched from the registry once.

A version registered before its reference existed (the shipped versions of an older
installation) falls back to ``MODEL_DIR/<name>/<version>/`` when that folder holds the same weights.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from digitflow.model_files import install_dir, read_model_json
from digitflow.reference import REFERENCE_FILE, Reference, load_reference
from digitflow.settings import MonitorSettings

if TYPE_CHECKING:
    from digitflow.model_store import RegistryStore

logger = logging.getLogger("monitor_worker.references")


class References:
    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self._cache: dict[tuple[str, str, str], Reference | None] = {}
        self._store: RegistryStore | None = None
        self._lock = threading.RLock()  # the worker's warm-up thread and its task both fetch
        # The id of the MLflow store the registry view describes (digitflow.store_identity):
        # version numbers restart in a reset store, so the cache (memory and disk) is kept per store.
        self._store_id = "unbound"

    def use_store(self, store_id: str | None) -> None:
        """Fetch and cache references of the MLflow store with ``store_id`` from now on."""
        with self._lock:
            self._store_id = store_id or "unbound"

    def store(self) -> RegistryStore:
        """One MLflow client for the process: opening its store (and checking its schema) costs
        about 2 s of CPU on a 2-core VM, which each fetched reference paid before."""
        if self._store is None:
            from digitflow.model_store import RegistryStore

            self._store = RegistryStore(self.settings.tracking_uri, self.settings.artifact_root)
        return self._store

    def get(self, name: str, version: str) -> Reference | None:
        """The reference of ``name`` ``version``, or None when it has none or cannot be fetched."""
        with self._lock:
            key = (self._store_id, name, version)
            if key not in self._cache:
                try:
                    self._cache[key] = self._load(name, version, self._store_id)
                except Exception as exc:  # registry unreachable: try again on the next run
                    logger.warning("no reference for %s %s: %s", name, version, exc)
                    return None
            return self._cache[key]

    def _load(self, name: str, version: str, store_id: str) -> Reference | None:
        s = self.settings
        target = s.var_dir / "monitor-cache" / store_id / name / version

        def fill(tmp: Path) -> None:
            scratch = tmp.parent / f"{tmp.name}.dl"
            try:
                shutil.move(str(self.store().download(name, version, scratch)), tmp)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

        folder = install_dir(fill, target)
        ref = load_reference(folder)
        if ref is None:
            shipped = s.model_dir / name / version
            if (shipped / REFERENCE_FILE).is_file() and (
                read_model_json(shipped).get("weights_sha256") == read_model_json(folder).get("weights_sha256")
            ):
                ref = load_reference(shipped)
        return ref
