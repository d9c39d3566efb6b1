"""Faults between hosts, each under closed-loop load from the host: a container killed, Redis
restarted, a replica cut off from the network, a replica replaced by a rebuilt image.

Every test prints jobs accepted, succeeded, failed and duplicated, and the time from the fault
to the last job's answer (docs/operations.md, "Compose", quotes them). "Duplicated" counts jobs
whose completion the job store published more than once (``df:done``, watched inside Redis).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.deploy.compose_stack import ComposeStack
from tests.deploy.engine import ROOT
from tests.deploy.load import DoneWatcher, Load

IMAGE = "docker.io/digitflow/inference:latest"
REPLICAS = ("--scale", "preprocess_worker=3", "--scale", "inference_worker=2")


@pytest.fixture
def watcher(stack: ComposeStack) -> Iterator[DoneWatcher]:
    found = DoneWatcher(lambda argv: stack.popen("redis", argv))
    time.sleep(1)  # subscribed before the load starts
    yield found
    found.close()


def under_load(
    stack: ComposeStack, name: str, fault: Callable[[], None], watcher: DoneWatcher | None, total: int = 200
) -> Load:
    """16 clients submit ``total`` photos; the fault strikes once a quarter of them are accepted."""
    load = Load(stack.base_url, total=total, inflight=16, seed=hash(name) % 1000).start()
    wait_until(lambda: load.accepted_count() >= total // 4, 120, 0.05, what="a quarter of the load accepted")
    fault_at = time.time()
    fault()
    load.join(timeout_s=400)
    print(load.tally.line(name, fault_at, watcher.counts if watcher else None))
    assert not load.tally.refused, load.tally.refused[:5]
    return load


def assert_exactly_once(load: Load, watcher: DoneWatcher) -> None:
    results = load.tally.results
    assert len(results) == len(load.tally.accepted), load.unfinished()
    failed = {j: r["error"] for j, r in results.items() if r["status"] != "succeeded"}
    assert not failed, failed
    twice = {j: n for j, n in watcher.counts.items() if n > 1 and j in results}
    assert not twice, twice


def restore_replicas(stack: ComposeStack) -> None:
    stack.compose("up", "-d", "--no-deps", "--no-recreate", *REPLICAS, "preprocess_worker", "inference_worker")
    wait_until(lambda: len(stack.containers("inference_worker")) == 2, 120, 1, what="two inference replicas")
    stack.wait_ready()


def test_kill_9_of_an_inference_container_holding_a_batch(stack: ComposeStack, watcher: DoneWatcher) -> None:
    restore_replicas(stack)
    victim = stack.container("inference_worker")
    load = under_load(stack, "kill -9 of an inference container", lambda: stack.engine.podman("kill", victim), watcher)
    assert_exactly_once(load, watcher)
    restore_replicas(stack)


def test_redis_restarted_under_load(stack: ComposeStack) -> None:
    redis = stack.container("redis")
    load = under_load(stack, "Redis container restarted", lambda: stack.engine.podman("restart", redis), None)
    failed = {j: r["error"] for j, r in load.tally.results.items() if r["status"] != "succeeded"}
    assert len(load.tally.results) == len(load.tally.accepted) and not failed, failed
    stack.wait_ready()


def test_a_preprocess_replica_cut_off_for_20_s(stack: ComposeStack, watcher: DoneWatcher) -> None:
    restore_replicas(stack)
    victim = stack.containers("preprocess_worker")[-1]
    network = stack.network()

    def partition() -> None:
        stack.engine.podman("network", "disconnect", network, victim)
        time.sleep(20)
        stack.engine.podman("network", "connect", "--alias", "preprocess_worker", network, victim)

    load = under_load(stack, "a preprocess replica disconnected for 20 s", partition, watcher)
    assert_exactly_once(load, watcher)


def test_inference_replaced_by_a_rebuilt_image_under_load(
    stack: ComposeStack, watcher: DoneWatcher, tmp_path: Path
) -> None:
    restore_replicas(stack)
    before = {c: stack.engine.inspect([c])[0]["Image"] for c in stack.containers("inference_worker")}
    # A rebuild as CI makes one: the same Dockerfile target, a new image (podman reuses every
    # cached layer, and a cache hit keeps the old image, so the build's label goes on top).
    stack.engine.run_script(ROOT / "deploy" / "offline" / "build-images.sh", "inference")
    rebuilt = tmp_path / "Containerfile"
    rebuilt.write_text(f"FROM {IMAGE}\nLABEL digitflow.build={time.time_ns()}\n")
    stack.engine.podman("build", "-q", "-t", IMAGE, "-f", str(rebuilt), str(tmp_path))

    def replace() -> None:
        stack.compose("up", "-d", "--no-deps", *REPLICAS, "inference_worker")

    load = under_load(stack, "inference replaced by a rebuilt image", replace, watcher)
    assert_exactly_once(load, watcher)
    after = {c: stack.engine.inspect([c])[0]["Image"] for c in stack.containers("inference_worker")}
    assert len(after) == 2 and not set(after.values()) & set(before.values()), (before, after)
