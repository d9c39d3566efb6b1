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


def test_backlog_forms_batches_when_slots_are_full() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=4, wait_s=10.0, max_in_flight=1)
    batcher.submit(items("a"))
    wait_for(lambda: len(rec.batches) == 1)
    batcher.submit(items("b", "c"))
    time.sleep(0.05)
    assert len(rec.batches) == 1, "slot is full and the batch is not full: must wait"
    batcher.submit(items("d", "e", "f"))
    wait_for(lambda: len(rec.batches) == 2)
    assert rec.batches[1] == ["b", "c", "d", "e"], "a full batch leaves even without a free slot"
    batcher.finished(["a"])
    time.sleep(0.05)
    assert len(rec.batches) == 2, "the b-e batch still holds the only slot"
    batcher.finished(["b", "c", "d", "e"])
    wait_for(lambda: len(rec.batches) == 3)
    assert rec.batches[2] == ["f"]
    batcher.close()


def test_wait_bound_flushes_a_partial_batch() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=100, wait_s=0.05, max_in_flight=1)
    batcher.submit(items("a"))
    wait_for(lambda: len(rec.batches) == 1)
    batcher.submit(items("b"))
    wait_for(lambda: len(rec.batches) == 2, timeout=1.0)
    assert rec.batches[1] == ["b"]
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
