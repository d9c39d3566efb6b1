"""Redis at its memory limit (maxmemory, noeviction, as compose runs it), under load: the
gateway sheds new jobs before Redis refuses writes, and every job it accepted finishes, or
fails with a code, within seconds, not at the deadline sweep. Prints the numbers
docs/reliability.md states."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from digitflow import keys
from digitflow.jobs import JobStore, NewJob, new_job_id
from digitflow.keys import ACTIVE_JOBS, IMAGE_PREFIX
from digitflow.messages import Item, make_batch
from digitflow.stage import run_stage
from digitflow_cli.supervisor import free_port, redis_argv, wait_for_redis
from tests.conftest import RedisServer, stop_redis
from tests.imagegen import big_photo
from tests.integration.test_faults import FAST_RECOVERY, wait_all
from tests.integration.test_pipeline import heldout_digits
from tests.stacks import start_stack

pytestmark = pytest.mark.slow
MAXMEMORY = 8 * 1024 * 1024
LOAD_S = 8.0
# kombu's queue lists and bookkeeping: bounded by the queues' depth (the gateway's 429s).
KOMBU_KEYS = ("_kombu", "unacked", "preprocess", "inference", "postprocess", "registry", "monitor", "training")


def keys_without_ttl() -> tuple[str, ...]:
    """Key prefixes digitflow/keys.py's table lists with TTL "none" (each bound said there)."""
    rows = [row.split("|") for row in (keys.__doc__ or "").splitlines() if row.startswith("| df:")]
    return tuple(cells[1].strip().split("<")[0] for cells in rows if cells[3].strip().startswith("none"))


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    port = free_port()
    argv = [*redis_argv(tmp_path / "redis", port), "--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"]
    proc = subprocess.Popen([*argv, "--logfile", str(tmp_path / "redis.log")])
    server = RedisServer(port, proc, tmp_path / "redis")
    wait_for_redis(server.url())
    yield server
    stop_redis(server)


class PeakMemory:
    """The highest used_memory / maxmemory seen, sampled every 20 ms."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            info = self.client.info("memory")
            self.peak = max(self.peak, info["used_memory"] / info["maxmemory"])

    def close(self) -> float:
        self._stop.set()
        self._thread.join(5)
        self.client.close()
        return self.peak


def test_redis_full_under_load_every_accepted_job_ends_within_seconds(small_redis: RedisServer, tmp_path: Path) -> None:
    url = small_redis.url()
    stack = start_stack(url, tmp_path / "var", env=FAST_RECOVERY)
    images = [big_photo(digit, seed=i) for i, (digit, _) in enumerate(heldout_digits(12, seed=1000))]
    peak = PeakMemory(url)
    try:

        def client(n: int) -> list[tuple[int, str, str, float]]:
            session, out = requests.Session(), list[tuple[int, str, str, float]]()
            stop_at = time.monotonic() + LOAD_S
            while time.monotonic() < stop_at:
                r = session.post(
                    f"{stack.base_url}/v1/jobs",
                    data=images[(n + len(out)) % len(images)],
                    headers={"Content-Type": "image/jpeg"},
                    timeout=30,
                )
                body = r.json()
                reason = body.get("error", {}).get("details", {}).get("reason", body.get("error", {}).get("code", ""))
                out.append((r.status_code, reason, body.get("job_id", ""), time.time()))
            session.close()
            return out

        with ThreadPoolExecutor(16) as pool:
            answers = [a for batch in pool.map(client, range(16)) for a in batch]
        load_end = time.time()
        statuses = Counter(status for status, _, _, _ in answers)
        accepted = [job_id for status, _, job_id, _ in answers if status == 202]
        jobs = wait_all(stack, accepted, timeout_s=60)
        ended = Counter(str(j["status"]) for j in jobs)
        codes = Counter(j["error"]["code"] for j in jobs if j["error"])  # type: ignore[index]
        late = max(float(j["finished_at"] or 0) - load_end for j in jobs)  # type: ignore[arg-type]
        longest = max(float(j["timings_ms"]["total"] or 0) for j in jobs) / 1000  # type: ignore[index]
        reasons = Counter(reason for status, reason, _, _ in answers if status != 202)
        print(
            f"\n[redis full] {len(answers)} requests: {dict(statuses)}; refusals {dict(reasons)}; "
            f"peak memory {peak.peak:.0%} of {MAXMEMORY >> 20} MB; accepted jobs {dict(ended)} {dict(codes)}; "
            f"longest accepted job {longest:.1f} s; last one ended {late:.1f} s after the load stopped"
        )
        assert set(statuses) <= {202, 429, 503}, statuses
        assert reasons["redis_memory"] > 0, "the load never filled Redis: the test proves nothing"
        assert ended["succeeded"] + ended["failed"] == len(accepted), ended
        assert set(codes) <= {"store_unavailable"}, codes
        assert ended["succeeded"] > 0
        # Memory comes back: finished jobs dropped their images; new work is accepted again.
        after = stack.submit(images[0], "image/jpeg", wait=15).json()
        assert after["status"] == "succeeded", after
        assert redis.Redis.from_url(url).zcard(ACTIVE_JOBS) == 0
        client_ = redis.Redis.from_url(url)
        unbounded = [
            key.decode()
            for key in client_.scan_iter(count=1000)
            if client_.ttl(key) == -1 and not key.decode().startswith((*keys_without_ttl(), *KOMBU_KEYS))
        ]
        assert unbounded == [], "every other key must carry a TTL"
    finally:
        peak.close()
        stack.close()


def test_a_stage_whose_store_write_is_refused_fails_the_batch_at_once(small_redis: RedisServer) -> None:
    """At maxmemory Redis refuses the stage's bookkeeping write: the batch's jobs fail with
    ``store_unavailable`` at once (the failure write is allowed, and frees their images)
    instead of staying in a stage until the deadline sweep."""
    client = redis.Redis.from_url(small_redis.url())
    store = JobStore(client, 3600)
    ids = store.create([NewJob(new_job_id(), "digits", bytes(50_000)) for _ in range(4)])
    client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) - 1024))  # full now
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "x")
    batch = dict(make_batch("b1", [{"job_id": job_id, "model": "digits"} for job_id in ids]))
    ran: list[object] = []

    def step(items: list[Item]) -> list[object]:
        ran.extend(items)
        return []

    out = run_stage("preprocess", batch, store, step)
    assert out["items"] == [] and ran == [], "nothing runs on a store that takes no bookkeeping"
    for job_id in ids:
        job = store.get(job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "store_unavailable", job
        assert client.get(IMAGE_PREFIX + job_id) is None
    client.config_set("maxmemory", str(MAXMEMORY))
    client.close()
