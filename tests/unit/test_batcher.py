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
    sends: list[list[str]] = []

    def broken(batch_id: str, batch: list[Item]) -> None:
        sends.append([i["job_id"] for i in batch])
        raise ValueError("cannot encode")

    def settle(its: list[Item], exc: Exception) -> bool:
        failed.append([i["job_id"] for i in its])
        return True

    batcher = Batcher(broken, 8, 10.0, 1, on_send_error=settle)
    batcher.submit(items("a", "b"))
    wait_for(lambda: failed == [["a", "b"]])
    wait_for(lambda: batcher.in_flight == 0)
    time.sleep(0.3)
    assert sends == [["a", "b"]], "settled jobs are not sent again"
    assert batcher.pending == 0
    batcher.close()


class Flaky:
    """A broker that refuses the first ``failures`` sends."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[tuple[float, list[str]]] = []
        self.sent: list[list[str]] = []

    def __call__(self, batch_id: str, batch: list[Item]) -> None:
        ids = [i["job_id"] for i in batch]
        self.attempts.append((time.monotonic(), ids))
        if len(self.attempts) <= self.failures:
            raise ConnectionError("broker down")
        self.sent.append(ids)


def test_unsettled_send_failure_keeps_the_jobs_first_in_line_and_retries_with_backoff() -> None:
    flaky = Flaky(failures=3)
    unsettled: list[list[str]] = []

    def store_down(its: list[Item], exc: Exception) -> bool:
        unsettled.append([i["job_id"] for i in its])
        raise ConnectionError("the job store is down too")

    batcher = Batcher(flaky, batch_max=8, wait_s=10.0, max_in_flight=1, on_send_error=store_down)
    start = time.monotonic()
    batcher.submit(items("a", "b"))
    wait_for(lambda: len(flaky.attempts) >= 2)
    batcher.submit(items("c"))  # arrives during the outage: waits behind the kept jobs
    wait_for(lambda: len(flaky.attempts) >= 3 and batcher.pending == 3)
    # The overload check reads this: kept jobs keep their wait since submit, not since the retry.
    assert batcher.oldest_wait_s > time.monotonic() - start - 0.1
    wait_for(lambda: flaky.sent, timeout=5.0)
    assert flaky.sent[0][:2] == ["a", "b"], "kept jobs leave first, in their order"
    assert [ids for _, ids in flaky.attempts][:2] == [["a", "b"], ["a", "b"]]
    assert len(unsettled) == 3
    gaps = [b[0] - a[0] for a, b in zip(flaky.attempts, flaky.attempts[1:], strict=False)]
    assert gaps[0] >= 0.09 and gaps[2] >= 0.45, f"backs off between attempts: {gaps}"
    batcher.finished(["a", "b", "c"])
    wait_for(lambda: sum(len(s) for s in flaky.sent) == 3)
    assert time.monotonic() - start < 5.0
    batcher.close()


def test_a_send_after_recovery_resets_the_backoff() -> None:
    flaky = Flaky(failures=4)
    batcher = Batcher(flaky, batch_max=8, wait_s=10.0, max_in_flight=1, on_send_error=lambda its, exc: False)
    batcher.submit(items("a"))
    wait_for(lambda: flaky.sent == [["a"]], timeout=5.0)
    batcher.finished(["a"])
    submitted = time.monotonic()
    batcher.submit(items("b"))
    wait_for(lambda: len(flaky.sent) == 2)
    assert flaky.attempts[-1][0] - submitted < 0.09, "no backoff once a send went through"
    batcher.close()


def test_lost_batch_slot_times_out() -> None:
    rec = Recorder()
    batcher = Batcher(rec, batch_max=8, wait_s=10.0, max_in_flight=1, slot_timeout_s=0.1)
    batcher.submit(items("a"))
    wait_for(lambda: len(rec.batches) == 1)
    batcher.submit(items("b"))
    wait_for(lambda: len(rec.batches) == 2, timeout=2.0)
    batcher.close()
