"""The micro-batching rule, with a fake sender (no Redis)."""

from __future__ import annotations

import threading
import time

from digitflow.messages import Item
from gateway.batcher import Batcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.event = threading.Event()

    def __call__(self, batch_id: str, items: list[Item]) -> None:
        self.batches.append([item["job_id"] for item in items])
        self.event.set()


def items(*ids: str) -> list[Item]:
    return [{"job_id": i, "model": "digits"} for i in ids]


def wait_for(pred: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_lone_job_leaves_at_once_when_idle() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=32, wait_s=10.0, max_in_flight=2)
    start = time.monotonic()
    batcher.submit(items("a"))
    assert rec.event.wait(1.0)
    # Far below the 10 s batch wait: an idle pipeline never holds a job back.
    assert time.monotonic() - start < 0.5
    assert rec.batches == [["a"]]
    batcher.close()


def test_backlog_waits_for_a_slot_and_leaves_as_one_batch() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=4, wait_s=0.01, max_in_flight=1)
    batcher.submit(items("a"))
    wait_for(lambda: len(rec.batches) == 1)
    batcher.submit(items("b", "c", "d", "e", "f"))
    time.sleep(0.1)
    assert len(rec.batches) == 1, "the only slot is taken: even a full batch waits (the backlog stays here)"
    assert batcher.pending == 5 and batcher.oldest_wait_s >= 0.09
    batcher.finished(["a"])
    wait_for(lambda: len(rec.batches) == 2)
    assert rec.batches[1] == ["b", "c", "d", "e"], "the oldest jobs leave first, up to batch_max"
    batcher.finished(["b", "c", "d", "e"])
    wait_for(lambda: len(rec.batches) == 3)
    assert rec.batches[2] == ["f"]
    batcher.close()


def test_busy_with_room_waits_for_company_up_to_the_wait_bound() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=100, wait_s=0.2, max_in_flight=3)
    batcher.submit(items("a"))
    wait_for(lambda: len(rec.batches) == 1)
    start = time.monotonic()
    batcher.submit(items("b"))
    time.sleep(0.05)
    batcher.submit(items("c"))
    wait_for(lambda: len(rec.batches) == 2, timeout=2.0)
    assert rec.batches[1] == ["b", "c"]
    assert 0.15 < time.monotonic() - start < 1.0
    batcher.close()


def test_busy_with_room_sends_a_full_batch_at_once() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=3, wait_s=10.0, max_in_flight=3)
    batcher.submit(items("a"))
    wait_for(lambda: len(rec.batches) == 1)
    batcher.submit(items("b", "c", "d"))
    wait_for(lambda: len(rec.batches) == 2, timeout=1.0)
    assert rec.batches[1] == ["b", "c", "d"]
    batcher.close()


def test_raising_the_cap_releases_waiting_jobs() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=1, wait_s=0.0, max_in_flight=1)
    batcher.submit(items("a", "b"))
    wait_for(lambda: len(rec.batches) == 1)
    time.sleep(0.05)
    assert len(rec.batches) == 1
    batcher.set_max_in_flight(2)
    wait_for(lambda: len(rec.batches) == 2)
    batcher.close()


def test_slot_frees_only_when_every_job_of_the_batch_finished() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=2, wait_s=10.0, max_in_flight=1)
    batcher.submit(items("a", "b"))
    wait_for(lambda: len(rec.batches) == 1)
    batcher.submit(items("c"))
    batcher.finished(["a", "unknown"])
    time.sleep(0.05)
    assert batcher.in_flight == 1 and len(rec.batches) == 1
    batcher.finished(["b"])
    wait_for(lambda: len(rec.batches) == 2)
    assert rec.batches[1] == ["c"]
    batcher.close()


def test_send_failure_reports_the_jobs_and_frees_the_slot() -> None:
    failed: list[list[str]] = []

    def broken(batch_id: str, batch: list[Item]) -> None:
        raise ConnectionError("broker down")

    batcher = Batcher(broken, 8, 10.0, 1, on_send_error=lambda its, exc: failed.append([i["job_id"] for i in its]))
    batcher.submit(items("a", "b"))
    wait_for(lambda: failed == [["a", "b"]])
    wait_for(lambda: batcher.in_flight == 0)
    batcher.close()


def test_lost_batch_slot_times_out() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=8, wait_s=10.0, max_in_flight=1, slot_timeout_s=0.1)
    batcher.submit(items("a"))
    wait_for(lambda: len(rec.batches) == 1)
    batcher.submit(items("b"))
    wait_for(lambda: len(rec.batches) == 2, timeout=2.0)
    batcher.close()
