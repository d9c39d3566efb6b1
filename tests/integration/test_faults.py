"""Fault injection against real Redis and real worker processes: nothing accepted is lost.

Each test starts its own stack (and, where Redis itself is the fault, its own Redis). The
recovery times they print are the ones docs/reliability.md states.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from PIL import Image, PngImagePlugin

from digitflow.keys import DONE_CHANNEL
from digitflow_cli.supervisor import free_port
from tests.conftest import RedisServer, start_redis, stop_redis, wait_until
from tests.integration.test_pipeline import heldout_digits, paper_photo
from tests.stacks import Stack, start_stack

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed"}
FAST_RECOVERY = {"VISIBILITY_TIMEOUT_S": "8", "JOB_DEADLINE_S": "120", "SWEEP_INTERVAL_S": "1"}


class DoneCounter:
    """Counts every completion published per job id: "exactly one result" made observable."""

    def __init__(self, url: str) -> None:
        self.counts: Counter[str] = Counter()
        self._pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(DONE_CHANNEL)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.5)
            except (redis.RedisError, OSError):
                time.sleep(0.2)
                continue
            if message and message["type"] == "message":
                self.counts.update(message["data"].decode().split(","))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()


def photos(n: int, seed: int = 0) -> list[tuple[bytes, int]]:
    return [(paper_photo(d, seed=seed + i), label) for i, (d, label) in enumerate(heldout_digits(n, seed=seed))]


def submit_many(stack: Stack, images: list[tuple[bytes, int]], per_request: int = 10) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(images), per_request):
        files = [("image", (f"{j}.jpg", data, "image/jpeg")) for j, (data, _) in enumerate(images[i : i + per_request])]
        response = requests.post(f"{stack.base_url}/v1/jobs", files=files, timeout=30)
        assert response.status_code == 202, response.text
        body = response.json()
        ids += [j["job_id"] for j in body.get("jobs", [body])]
    return ids


def wait_all(stack: Stack, ids: list[str], timeout_s: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    jobs = []
    for job_id in ids:
        while True:
            stack.supervisor.poll()
            job = stack.job(job_id, wait=2)
            if job["status"] in TERMINAL or time.monotonic() > deadline:
                break
        jobs.append(job)
    return jobs


def broker_state(url: str) -> dict[str, object]:
    """What kombu's Redis transport holds: delivered-but-unacknowledged messages (restored to
    their queue after VISIBILITY_TIMEOUT_S, under a mutex any worker may hold) and queue depths."""
    client = redis.Redis.from_url(url)
    try:
        now = time.time()
        index = client.zrange("unacked_index", 0, -1, withscores=True)
        return {
            "unacked": client.hlen("unacked"),
            "unacked_ages_s": [round(now - score, 1) for _, score in index],
            "unacked_mutex_ttl_s": client.ttl("unacked_mutex"),
            "queues": {q: client.llen(q) for q in ("preprocess", "inference", "postprocess")},
        }
    finally:
        client.close()


def pool_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def fault_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    url = redis_server.url(6)
    redis.Redis.from_url(url).flushdb()
    stack = start_stack(url, tmp_path / "var", env=FAST_RECOVERY)
    yield stack
    stack.close()


# Preprocess runs prefork (a pool child dies, its parent hands the batch out again); inference
# runs solo (the worker itself dies and is started again; a live worker's keeper hands its batch
# back to the queue within seconds: digitflow/deliveries.py, tests/integration/test_handoff.py).
@pytest.mark.parametrize(("service", "victim"), [("preprocess", "pool_child"), ("inference", "main_process")])
def test_kill_9_of_a_worker_mid_stream_loses_nothing(fault_stack: Stack, service: str, victim: str) -> None:
    stack = fault_stack
    done = DoneCounter(stack.config.redis_url)
    images = photos(60, seed=100)
    ids = submit_many(stack, images[:30])
    main_pid = stack.supervisor.running[service].proc.pid
    target = pool_children(main_pid)[0] if victim == "pool_child" else main_pid
    os.kill(target, signal.SIGKILL)
    killed_at = time.monotonic()
    ids += submit_many(stack, images[30:])
    jobs = wait_all(stack, ids, timeout_s=90)
    recovery = time.monotonic() - killed_at
    done.close()
    print(f"\n[{service} {victim}] all 60 jobs finished {recovery:.1f} s after kill -9")
    statuses = Counter(str(j["status"]) for j in jobs)
    assert statuses == {"succeeded": 60}, f"{dict(statuses)}; broker: {broker_state(stack.config.redis_url)}"
    correct = sum(j["result"]["label"] == label for j, (_, label) in zip(jobs, images, strict=True))  # type: ignore[index]
    assert correct >= 55
    assert all(done.counts[job_id] == 1 for job_id in ids), "every job must record exactly one result"


def png_with_text(marker: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", marker)
    out = io.BytesIO()
    img = Image.new("L", (200, 200), 255)
    img.paste(0, (90, 40, 110, 160))
    img.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def test_poison_job_is_failed_after_bounded_retries_and_others_flow(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url(7)
    redis.Redis.from_url(url).flushdb()
    stack = start_stack(url, tmp_path / "var", env={**FAST_RECOVERY, "FAULT_CRASH_MARKER": "DIGITFLOW-POISON"})
    try:
        normal = photos(5, seed=200)
        files = [("image", ("p.png", png_with_text("DIGITFLOW-POISON"), "image/png"))]
        files += [("image", (f"{i}.jpg", data, "image/jpeg")) for i, (data, _) in enumerate(normal)]
        sent_at = time.time()
        body = requests.post(f"{stack.base_url}/v1/jobs", files=files, timeout=30).json()
        ids = [j["job_id"] for j in body["jobs"]]
        jobs = wait_all(stack, ids, timeout_s=60)
        ended = max(float(j["finished_at"]) for j in jobs) - sent_at  # type: ignore[arg-type]
        print(f"\n[poison, prefork preprocess] all 6 jobs ended {ended:.1f} s after submission")
        poison, rest = jobs[0], jobs[1:]
        assert poison["status"] == "failed"
        assert poison["error"] == {  # type: ignore[comparison-overlap]
            "stage": "preprocess",
            "code": "poison",
            "message": "this input crashed the preprocess worker 2 times; it will not be retried",
            "details": {"strikes": 2},
        }
        assert [j["status"] for j in rest] == ["succeeded"] * 5
        # Other traffic keeps flowing after the poison job is out.
        after = stack.submit(photos(1, seed=300)[0][0], "image/jpeg", wait=15).json()
        assert after["status"] == "succeeded"
        events = stack.log_events("preprocess")
        assert sum(e.get("event") == "batch_redelivered" for e in events) >= 2
    finally:
        stack.close()


def test_a_stage_that_stays_down_holds_jobs_until_it_returns(fault_stack: Stack) -> None:
    stack = fault_stack
    spec = stack.supervisor.running["inference"].spec
    stack.supervisor.stop("inference")
    ids = submit_many(stack, photos(12, seed=400), per_request=4)

    def inference_queue_depth() -> float:
        text = requests.get(f"{stack.base_url}/metrics", timeout=5).text
        line = next(ln for ln in text.splitlines() if ln.startswith('digitflow_queue_depth{queue="inference"}'))
        return float(line.rsplit(" ", 1)[1])

    wait_until(lambda: inference_queue_depth() > 0, 20, what="jobs waiting in the inference queue")
    wait_until(lambda: requests.get(f"{stack.base_url}/readyz", timeout=5).status_code == 503, 15)
    assert requests.get(f"{stack.base_url}/readyz", timeout=5).json()["missing_stages"] == ["inference"]
    assert all(stack.job(job_id)["status"] == "preprocessing" for job_id in ids)
    stack.supervisor.start(spec)
    jobs = wait_all(stack, ids, timeout_s=60)
    assert [j["status"] for j in jobs] == ["succeeded"] * 12
    assert inference_queue_depth() == 0


def test_redis_restart_mid_stream(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(tmp_path / "redis", port)
    stack = start_stack(server.url(), tmp_path / "var", env=FAST_RECOVERY)
    try:
        images = photos(40, seed=500)
        ids = submit_many(stack, images[:20], per_request=5)
        stop_redis(server)  # SIGTERM: Redis writes its AOF and exits
        start = time.monotonic()
        down = stack.session.post(
            f"{stack.base_url}/v1/jobs", data=images[20][0], headers={"Content-Type": "image/jpeg"}, timeout=10
        )
        answered_in = time.monotonic() - start
        assert down.status_code == 503 and down.headers["Retry-After"]
        assert down.json()["error"]["code"] == "service_unavailable"
        assert answered_in < 3, f"the gateway took {answered_in:.1f} s to say Redis is down"
        time.sleep(2)
        server = start_redis(tmp_path / "redis", port)
        restarted = time.monotonic()
        wait_until(lambda: requests.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200, 60, what="ready")
        ready_after = time.monotonic() - restarted
        ids += submit_many(stack, images[20:], per_request=5)
        jobs = wait_all(stack, ids, timeout_s=150)
        statuses = Counter(str(j["status"]) for j in jobs)
        codes = Counter(str(j["error"]["code"]) for j in jobs if j["status"] == "failed")  # type: ignore[index]
        # Printed on every run: recovery time and how the jobs ended.
        print(
            f"\n[redis restart] gateway 503 in {answered_in * 1000:.0f} ms; "
            f"ready {ready_after:.1f} s after Redis returned; all ended {time.monotonic() - restarted:.1f} s "
            f"after it; {dict(statuses)}, failures {dict(codes)}"
        )
        assert statuses["succeeded"] + statuses["failed"] == 40, statuses
        failures = [j["error"] for j in jobs if j["status"] == "failed"]
        # A stage whose batch was blocked on Redis through the outage can run out of its time
        # limit (seen once in four runs, at postprocess): stage_timeout names the stage, and the
        # job still ends. deadline_exceeded would mean a job nobody sent (the gateway keeps and
        # re-sends a batch whose send met no Redis: gateway/batcher.py); before that fix, 20 of
        # 40 jobs once waited the whole JOB_DEADLINE_S. Any other code is a defect too.
        allowed = {"service_unavailable", "stage_timeout"}
        assert all(f["code"] in allowed for f in failures), failures  # type: ignore[index]
        assert statuses["succeeded"] >= 20, statuses
    finally:
        stack.close()
        stop_redis(server)


def test_services_wait_for_redis_at_start(tmp_path: Path) -> None:
    from digitflow_cli.supervisor import StackConfig, Supervisor, build_specs

    port = free_port()
    config = StackConfig(
        var_dir=tmp_path / "var",
        redis_url=f"redis://127.0.0.1:{port}/0",
        gateway_port=free_port(),
        metrics_ports=(free_port(), free_port(), free_port()),
        workers={"preprocess": 1, "inference": 1, "postprocess": 1},
        flower=False,
        env={"HEARTBEAT_INTERVAL_S": "0.5", "HEARTBEAT_TTL_S": "3"},
    )
    supervisor = Supervisor(build_specs(config), config.var_dir / "log")
    supervisor.start_all()
    stack = Stack(supervisor, f"http://127.0.0.1:{config.gateway_port}", config)
    server = None
    try:
        wait_until(lambda: _status(stack, "/readyz") == 503, 60, what="the gateway to answer without Redis")
        time.sleep(3)
        assert all(run.proc.poll() is None for run in supervisor.running.values()), "a service gave up waiting"
        server = start_redis(tmp_path / "redis", port)
        stack.wait_ready(60)
        job = stack.submit(photos(1, seed=600)[0][0], "image/jpeg", wait=15).json()
        assert job["status"] == "succeeded"
    finally:
        stack.close()
        if server is not None:
            stop_redis(server)


def _status(stack: Stack, path: str) -> int:
    try:
        return requests.get(stack.base_url + path, timeout=3).status_code
    except requests.RequestException:
        return 0


def test_overload_sheds_load_with_429_instead_of_growing_latency(redis_server: RedisServer, tmp_path: Path) -> None:
    """A closed-loop burst far above capacity: the gateway answers 429 + Retry-After once the
    waiting work's age passes MAX_QUEUE_AGE_S, and every job it accepted still finishes."""
    from concurrent.futures import ThreadPoolExecutor

    url = redis_server.url(9)
    redis.Redis.from_url(url).flushdb()
    env = {**FAST_RECOVERY, "MAX_QUEUE_AGE_S": "0.5", "MAX_QUEUE_DEPTH": "40", "BATCH_MAX": "4"}
    stack = start_stack(url, tmp_path / "var", env=env)
    images = [data for data, _ in photos(20, seed=700)]
    try:

        def client(n: int) -> list[tuple[int, str, str]]:
            session = requests.Session()
            out = []
            for i in range(15):
                r = session.post(
                    f"{stack.base_url}/v1/jobs",
                    data=images[(n + i) % 20],
                    headers={"Content-Type": "image/jpeg"},
                    timeout=30,
                )
                out.append((r.status_code, r.headers.get("Retry-After", ""), r.json().get("job_id", "")))
            session.close()
            return out

        with ThreadPoolExecutor(48) as pool:
            answers = [a for batch in pool.map(client, range(48)) for a in batch]
        statuses = Counter(status for status, _, _ in answers)
        accepted = [job_id for status, _, job_id in answers if status == 202]
        shed = [(s, retry) for s, retry, _ in answers if s == 429]
        assert statuses[202] + statuses[429] == len(answers), statuses
        assert shed and all(int(retry) >= 1 for _, retry in shed), statuses
        jobs = wait_all(stack, accepted, timeout_s=120)
        assert [j["status"] for j in jobs] == ["succeeded"] * len(accepted)
        latencies = sorted(float(j["timings_ms"]["total"]) for j in jobs)  # type: ignore[index]
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
        slowest = max(jobs, key=lambda j: float(j["timings_ms"]["total"]))  # type: ignore[index]
        print("\n[overload] slowest job timings:", slowest["timings_ms"])
        print(
            f"[overload] {statuses[202]} accepted, {statuses[429]} shed (429); "
            f"accepted latency p50 {p50:.0f} ms p99 {p99:.0f} ms"
        )
    finally:
        stack.close()
