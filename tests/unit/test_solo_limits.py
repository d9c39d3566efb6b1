"""digitflow/solo_limits.py: the soft limit interrupts the task in this (main) thread, the hard
limit fails the batch, acknowledges the message and ends the process; nothing fires after the
task ended or for other tasks."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from digitflow.solo_limits import HARD_LIMIT_EXIT, SoloLimits, is_solo

TASK = "preprocess.run"


class Recorder:
    def __init__(self) -> None:
        self.failed: list[tuple[Any, BaseException]] = []
        self.acked = 0
        self.exits: list[int] = []
        self.exited = threading.Event()

    def fail(self, batch: Any, exc: BaseException) -> None:
        self.failed.append((batch, exc))

    def ack(self) -> None:
        self.acked += 1

    def exit(self, code: int) -> None:
        self.exits.append(code)
        self.exited.set()


@pytest.fixture
def rec() -> Iterator[Recorder]:
    previous = signal.getsignal(signal.SIGALRM)
    yield Recorder()
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def stuck() -> Iterator[None]:
    """This thread as C code that never returns to Python: the soft limit's signal waits."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # drop the alarm left pending
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})


def limits(rec: Recorder, soft_s: float, hard_s: float) -> SoloLimits:
    out = SoloLimits(TASK, soft_s, hard_s, rec.fail, exit_fn=rec.exit)
    out.enable()
    return out


def test_the_soft_limit_interrupts_the_running_task(rec: Recorder) -> None:
    lim = limits(rec, 0.2, 5.0)
    lim.started(TASK, "t1", ({"batch_id": "b"},), rec.ack)
    start = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        time.sleep(3)
    assert 0.15 < time.monotonic() - start < 1.5
    lim.finished("t1")
    assert rec.failed == [] and rec.exits == []


def test_nothing_fires_after_the_task_ended(rec: Recorder) -> None:
    lim = limits(rec, 0.2, 0.4)
    lim.started(TASK, "t1", ({"batch_id": "b"},), rec.ack)
    lim.finished("t1")
    time.sleep(0.7)  # past both limits: an alarm or the watchdog would strike here
    assert rec.exits == [] and rec.failed == [] and rec.acked == 0


def test_other_tasks_and_a_disabled_worker_are_not_limited(rec: Recorder) -> None:
    lim = limits(rec, 0.1, 0.2)
    lim.started("monitor.run", "t1", (), rec.ack)
    off = SoloLimits(TASK, 0.1, 0.2, rec.fail, exit_fn=rec.exit)  # a prefork worker: never enabled
    off.started(TASK, "t2", ({"batch_id": "b"},), rec.ack)
    time.sleep(0.4)
    assert rec.exits == [] and lim.enabled and not off.enabled


def test_the_hard_limit_fails_the_batch_acknowledges_it_and_ends_the_process(rec: Recorder) -> None:
    lim = limits(rec, 0.1, 0.3)
    batch = {"batch_id": "b", "items": [{"job_id": "j"}]}
    with stuck():
        lim.started(TASK, "t1", (batch,), rec.ack)
        assert rec.exited.wait(3), "the watchdog did not act at the hard limit"
    assert rec.exits == [HARD_LIMIT_EXIT]
    ((failed_batch, exc),) = rec.failed
    assert failed_batch is batch and isinstance(exc, TimeLimitExceeded)
    assert rec.acked == 1


def test_the_hard_limit_exits_even_when_failing_the_jobs_breaks(rec: Recorder) -> None:
    def broken(batch: Any, exc: BaseException) -> None:
        raise ConnectionError("redis is away")

    lim = SoloLimits(TASK, 0.1, 0.2, broken, exit_fn=rec.exit)
    lim.enable()
    with stuck():
        lim.started(TASK, "t1", ({"batch_id": "b"},), rec.ack)
        assert rec.exited.wait(3)
    assert rec.exits == [HARD_LIMIT_EXIT] and rec.acked == 0  # not acknowledged: redelivered later


def test_limits_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        SoloLimits(TASK, 2.0, 1.0, lambda b, e: None)


def test_is_solo_tells_celerys_pools_apart() -> None:
    from celery.concurrency.prefork import TaskPool as Prefork
    from celery.concurrency.solo import TaskPool as Solo

    assert is_solo(object.__new__(Solo)) and not is_solo(object.__new__(Prefork)) and not is_solo(None)
