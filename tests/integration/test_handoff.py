"""A dead or cut-off worker's batch is handed on within seconds, exactly once (issue 28).

Real Redis, real worker processes. VISIBILITY_TIMEOUT_S stays at its default (30 s) and the
stalled-job sweep at 69 s, so a recovery under 30 s can only be the hand-off by a live
worker's keeper (digitflow/deliveries.py). FAULT_HOLD_S holds every batch 0.5 s once its jobs
are claimed, so that the victim certainly holds one when it is killed or stopped. Each test
prints the slowest job's end, measured from the fault. The 10 s target is asserted with a
generous 30 s bound (a shared 2-core machine); the printed figures are what
docs/reliability.md states.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from digitflow.keys import DELIVERIES
from digitflow_cli.supervisor import SOLO_STAGES, ServiceSpec, StackConfig, worker_spec
from tests.conftest import RedisServer, wait_until
from tests.integration.test_faults import DoneCounter, photos, png_with_text, pool_children, submit_many, wait_all
from tests.stacks import Stack, start_stack

pytestmark = pytest.mark.slow
ENV = {"JOB_DEADLINE_S": "120", "SWEEP_INTERVAL_S": "1", "FAULT_HOLD_S": "0.5"}
BOUND_S = 30.0  # the target is 10 s; below the 30 s visibility timeout proves the hand-off


def second_worker(stage: str) -> Callable[[StackConfig], list[ServiceSpec]]:
    module = {"preprocess": "preprocess_worker", "inference": "inference_worker"}[stage]
    return lambda cfg: [worker_spec(cfg, f"{stage}-2", module, stage, 1, 0)]


@pytest.fixture
def make_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(db: int, env: dict[str, str] | None = None, **kwargs: object) -> Stack:
        url = redis_server.url(db)
        redis.Redis.from_url(url).flushdb()
        stack = start_stack(url, tmp_path / f"var{db}", env={**ENV, **(env or {})}, **kwargs)  # type: ignore[arg-type]
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


def held_by(client: redis.Redis, pid: int) -> int:
    """Deliveries the consuming process ``pid`` (of this host) holds now."""
    prefix = f"{socket.gethostname()}-{pid}-".encode()
    owners: list[bytes] = client.hvals(DELIVERIES)  # type: ignore[assignment]
    return sum(owner.startswith(prefix) for owner in owners)


def wait_held(client: redis.Redis, pid: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while held_by(client, pid) == 0:
        assert time.monotonic() < deadline, f"process {pid} never held a delivery"
        time.sleep(0.01)


def worker_events(stack: Stack, event: str) -> list[dict[str, object]]:
    return [
        e
        for name in stack.supervisor.running
        if name != "gateway"  # every worker runs a keeper (digitflow/worker_runtime.py)
        for e in stack.log_events(name)
        if e.get("event") == event
    ]


def report(name: str, stack: Stack, ids: list[str], done: DoneCounter, fault_at: float) -> list[dict[str, object]]:
    jobs = wait_all(stack, ids, timeout_s=90)
    time.sleep(1.0)
    done.close()
    statuses = Counter(str(j["status"]) for j in jobs)
    finished = [float(j["finished_at"]) for j in jobs if j["finished_at"]]  # type: ignore[arg-type]
    slowest = max(finished) - fault_at if finished else float("nan")
    duplicated = sum(done.counts[i] > 1 for i in ids)
    handed = [float(e["ts"]) for e in worker_events(stack, "deliveries_handed_on") if float(e["ts"]) >= fault_at]
    handed_s = f"{min(handed) - fault_at:.1f} s" if handed else "never (no keeper was needed)"
    print(
        f"\n[{name}] slowest job ended {slowest:.1f} s after the fault (handed on after {handed_s}); "
        f"accepted {len(ids)}, succeeded {statuses['succeeded']}, failed {statuses['failed']}, "
        f"duplicated {duplicated}"
    )
    assert duplicated == 0 and all(done.counts[i] == 1 for i in ids), "every job records exactly one result"
    assert slowest < BOUND_S, f"slowest job {slowest:.1f} s after the fault"
    return jobs


@pytest.mark.parametrize(
    ("case", "stage", "victim", "peer"),
    [
        ("solo inference, a peer alive", "inference", "main", True),
        ("solo inference, restarted", "inference", "main", False),
        ("prefork preprocess main process", "preprocess", "main", False),
        ("prefork preprocess child", "preprocess", "child", False),
    ],
)
def test_kill_9_of_a_worker_holding_a_batch(
    make_stack: Callable[..., Stack], case: str, stage: str, victim: str, peer: bool
) -> None:
    db = 12 + ["inference", "preprocess"].index(stage) * 2 + (victim == "child" or peer)
    kwargs: dict[str, object] = {}
    if peer:
        kwargs = {"extra_specs": second_worker(stage), "solo": SOLO_STAGES | {f"{stage}-2"}}
    stack = make_stack(db, **kwargs)
    client = redis.Redis.from_url(stack.config.redis_url)
    done = DoneCounter(stack.config.redis_url)
    main_pid = stack.supervisor.running[stage].proc.pid
    ids = submit_many(stack, photos(20, seed=100), per_request=10)
    wait_held(client, main_pid)
    target = pool_children(main_pid)[0] if victim == "child" else main_pid
    os.kill(target, signal.SIGKILL)
    killed_at = time.time()
    jobs = report(f"kill -9, {case}", stack, ids, done, killed_at)
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids)
    client.close()


def test_a_worker_stopped_for_20_s_gives_no_second_answer(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(3, extra_specs=second_worker("inference"), solo=SOLO_STAGES | {"inference-2"})
    client = redis.Redis.from_url(stack.config.redis_url)
    done = DoneCounter(stack.config.redis_url)
    pids = [stack.supervisor.running[name].proc.pid for name in ("inference", "inference-2")]
    ids = submit_many(stack, photos(10, seed=300), per_request=10)
    deadline = time.monotonic() + 30
    while not (holders := [pid for pid in pids if held_by(client, pid)]):
        assert time.monotonic() < deadline, "no inference worker held the batch"
        time.sleep(0.01)
    os.kill(holders[0], signal.SIGSTOP)
    stopped_at = time.time()
    try:
        wait_until(
            lambda: all(stack.job(i)["status"] in {"succeeded", "failed"} for i in ids), 30, what="the peer's answers"
        )
        before = {i: stack.job(i) for i in ids}
        time.sleep(max(0.0, stopped_at + 20 - time.time()))
    finally:
        os.kill(holders[0], signal.SIGCONT)
    time.sleep(8)  # the stopped worker resumes, runs into its time limits and tries to write
    jobs = report("SIGSTOP 20 s, solo inference, a peer alive", stack, ids, done, stopped_at)
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids)
    assert {i: stack.job(i) for i in ids} == before, "the stopped worker changed no job after it resumed"
    client.close()


def test_a_poison_input_under_solo_preprocess_is_contained(make_stack: Callable[..., Stack]) -> None:
    env = {"FAULT_CRASH_MARKER": "DIGITFLOW-POISON", "FAULT_HOLD_S": "0"}
    stack = make_stack(
        4, env, extra_specs=second_worker("preprocess"), solo=SOLO_STAGES | {"preprocess", "preprocess-2"}
    )
    done = DoneCounter(stack.config.redis_url)
    files = [("image", ("p.png", png_with_text("DIGITFLOW-POISON"), "image/png"))]
    files += [("image", (f"{i}.jpg", data, "image/jpeg")) for i, (data, _) in enumerate(photos(5, seed=200))]
    sent_at = time.time()
    body = requests.post(f"{stack.base_url}/v1/jobs", files=files, timeout=30).json()
    ids = [j["job_id"] for j in body["jobs"]]
    jobs = report("poison input, two solo preprocess workers", stack, ids, done, sent_at)
    assert jobs[0]["error"] == {
        "stage": "preprocess",
        "code": "poison",
        "message": "this input crashed the preprocess worker 2 times; it will not be retried",
        "details": {"strikes": 2},
    }
    assert [j["status"] for j in jobs[1:]] == ["succeeded"] * 5
    after = stack.submit(photos(1, seed=300)[0][0], "image/jpeg", wait=15).json()
    assert after["status"] == "succeeded"
