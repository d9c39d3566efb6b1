"""The inference process's model cache against a real Redis view (no workers): production and
pinned versions, LRU eviction, and hot swaps that never let a bad version in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import redis

from digitflow.errors import DigitflowError, ModelLoadingError, ModelVersionNotFoundError, VersionNotServableError
from digitflow.model_view import write_entries
from digitflow.settings import InferenceSettings
from inference_worker.deploy_watcher import HotSwapper
from inference_worker.serving import ModelCache, infer_items
from tests.conftest import wait_until
from tests.integration.test_pipeline import heldout_digits
from tests.model_dirs import copy_of, unloadable_copy


def entry(sources: dict[str, Path], production: str) -> dict[str, Any]:
    versions = {v: {"version": v, "input_profile": "digits-mnist", "source": str(p)} for v, p in sources.items()}
    return {"name": "digits", "aliases": {"production": production}, "history": [production], "versions": versions}


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {
        "1": copy_of("digits", tmp_path / "src" / "1"),
        "2": copy_of("digits", tmp_path / "src" / "2"),
        "3": unloadable_copy("digits", tmp_path / "src" / "3"),
    }


def cache_for(redis_url: str, tmp_path: Path, max_loaded: int) -> ModelCache:
    settings = InferenceSettings(redis_url=redis_url, var_dir=tmp_path / "var", max_loaded_models=max_loaded)
    return ModelCache(settings, redis.Redis.from_url(redis_url))


def items(pins: list[str | None]) -> list[Any]:
    pixels = [bytes(np.asarray(d, np.uint8).tobytes()) for d, _ in heldout_digits(len(pins))]
    out = []
    for i, (pin, px) in enumerate(zip(pins, pixels, strict=True)):
        item = {"job_id": f"{i:032x}", "model": "digits", "pixels": px}
        if pin:
            item["pin"] = pin
        out.append(item)
    return out


def test_production_and_pins_resolve_and_lru_evicts(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, sources: dict[str, Path]
) -> None:
    write_entries(redis_client, [{**entry(sources, "1"), "servable": ["2"]}])
    cache = cache_for(redis_url, tmp_path, max_loaded=1)
    assert cache.get("digits").version == "1"
    # A cold pinned version is loaded off the job's path: the job is told to retry meanwhile.
    with pytest.raises(ModelLoadingError) as loading:
        cache.get("digits", "2")
    assert loading.value.status == 503 and loading.value.retry_after == 2
    wait_until(lambda: cache.loaded() == [("digits", "2")], 60, 0.05, what="version 2 loaded in the background")
    assert cache.get("digits", "2").version == "2"  # version 1 was evicted: one model in memory
    # Production is loaded on the path (evicting 2 again), so the pin of 2 is cold once more.
    out = infer_items(items([None, "2", None]), cache)
    assert [o.code if isinstance(o, DigitflowError) else o["version"] for o in out] == ["1", "model_loading", "1"]
    # The files were copied into the machine's model cache once, per version.
    assert sorted(p.name for p in (tmp_path / "var" / "model-cache" / "digits").iterdir()) == ["1", "2"]
    with pytest.raises(ModelVersionNotFoundError):
        cache.get("digits", "9")
    with pytest.raises(VersionNotServableError):  # registered, but no admin marked it servable
        cache.get("digits", "3")


def test_a_deploy_swaps_and_a_bad_version_never_serves(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, sources: dict[str, Path]
) -> None:
    write_entries(redis_client, [entry(sources, "1")])
    cache = cache_for(redis_url, tmp_path, max_loaded=4)
    assert cache.get("digits").version == "1"
    swapper = HotSwapper(cache)
    prepared = swapper.prepare("digits", "2")
    assert prepared["ok"] and prepared["load_ms"] > 0, prepared
    # Loaded next to the old one, but jobs still get version 1 until the commit.
    assert cache.get("digits").version == "1" and cache.loaded() == [("digits", "1")]
    write_entries(redis_client, [entry(sources, "2")])
    ack = swapper.commit("digits", "2")
    assert ack["ok"] and ack["previous"] == "1" and ack["was_serving"], ack
    assert cache.get("digits").version == "2" and ("digits", "1") not in cache.loaded()

    ack = swapper.prepare("digits", "3")
    assert not ack["ok"] and ack["code"] == "model_unavailable" and "fc2.weight" in ack["error"], ack
    # Even told to switch to it (a missed prepare), a process keeps what it serves.
    write_entries(redis_client, [entry(sources, "3")])
    assert not swapper.commit("digits", "3")["ok"]
    assert cache.production("digits") == "2" and cache.get("digits").version == "2"
    assert json.loads(cast(bytes, redis_client.hget("df:models", "digits")))["aliases"]["production"] == "3"


def test_without_a_registry_view_the_shipped_folder_serves(redis_url: str, tmp_path: Path) -> None:
    cache = cache_for(redis_url, tmp_path, max_loaded=2)
    model = cache.get("digits")
    assert model.version == "1" and model.input_profile == "digits-mnist"
