"""A stage task's soft and hard time limits under Celery's solo pool, which ignores them.

Celery enforces ``soft_time_limit`` and ``time_limit`` only in its prefork pool: billiard sends
the pool child SIGUSR1 at the soft limit and kills it at the hard one, and the parent process
acknowledges the message and reports the failure. The solo pool runs each task inline in the
worker's main thread with no such parent, so a batch stuck there would outlive
``VISIBILITY_TIMEOUT_S`` and be handed to a second worker. Solo runs where one process owns
everything: inference on a GPU (CUDA does not survive fork) and any single-process stage
worker (no parent process handing each task over). For the stage's own task it does here what
prefork does:

* soft limit: an interval timer (SIGALRM) raises ``SoftTimeLimitExceeded`` in the task, which
  ``run_stage`` turns into ``stage_timeout`` for the jobs it had not finished;
* hard limit: should the task still run (stuck in C code, where no signal handler runs), a
  watchdog thread fails the batch's jobs with ``stage_timeout``, acknowledges the message, as
  the prefork parent does after killing its child, and ends the process (``os._exit``): the
  supervisor, compose's restart policy or Kubernetes starts a new one.

The timers are armed at ``task_prerun`` and cleared at ``task_postrun``, the points between
which billiard's own limits run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from digitflow.observability import log_event

logger = logging.getLogger("digitflow.solo_limits")
HARD_LIMIT_EXIT = 70  # EX_SOFTWARE: the process ended itself at a task's hard time limit
FailFn = Callable[[Any, BaseException], object]  # (the task's batch argument, the error)
AckFn = Callable[[], object]


def is_solo(pool: object) -> bool:
    return type(pool).__module__.endswith(".solo")


@dataclass
class _Running:
    task_id: str
    batch: Any
    hard_deadline: float
    ack: AckFn | None


class SoloLimits:
    """The limits of one task name in one solo worker process (armed from its main thread)."""

    def __init__(
        self, task_name: str, soft_s: float, hard_s: float, fail: FailFn, exit_fn: Callable[[int], object] = os._exit
    ) -> None:
        if not 0 < soft_s < hard_s:
            raise ValueError("need 0 < soft limit < hard limit")
        self.task_name, self.soft_s, self.hard_s = task_name, soft_s, hard_s
        self._fail, self._exit = fail, exit_fn
        self._running: _Running | None = None
        self._cond = threading.Condition()
        self._watchdog: threading.Thread | None = None

    def enable(self) -> None:
        """Install the SIGALRM handler and start the watchdog (in the main thread, once)."""
        if self._watchdog is not None:
            return
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._watchdog = threading.Thread(target=self._watch, name="solo-time-limits", daemon=True)
        self._watchdog.start()

    @property
    def enabled(self) -> bool:
        return self._watchdog is not None

    def started(self, task_name: str, task_id: str, args: Any, ack: AckFn | None = None) -> None:
        if not self.enabled or task_name != self.task_name:
            return
        batch = args[0] if args else None
        with self._cond:
            self._running = _Running(task_id, batch, time.monotonic() + self.hard_s, ack)
            self._cond.notify()
        signal.setitimer(signal.ITIMER_REAL, self.soft_s)

    def finished(self, task_id: str) -> None:
        running = self._running
        if running is None or running.task_id != task_id:
            return
        # Cleared first: an alarm already on its way finds no task and raises nothing here.
        self._running = None
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._running is not None:  # a late alarm after the task ended is ignored
            raise SoftTimeLimitExceeded(f"soft time limit ({self.soft_s:g} s) exceeded")

    def _watch(self) -> None:
        while True:
            with self._cond:
                running = self._running
                left = running.hard_deadline - time.monotonic() if running is not None else None
                if left is None or left > 0:
                    self._cond.wait(left)
                    continue
            if running is not None and self._running is running:  # not finished meanwhile
                self._hard_limit(running)
                self._running = None  # only reached when exit_fn returns (tests)

    def _hard_limit(self, running: _Running) -> None:
        log_event(
            logger,
            "hard_time_limit",
            logging.ERROR,
            task=self.task_name,
            task_id=running.task_id,
            limit_s=self.hard_s,
        )
        try:
            self._fail(running.batch, TimeLimitExceeded(self.hard_s))
            if running.ack is not None:
                # The jobs are failed: the message must not be handed out again (as prefork's
                # parent acknowledges a task whose child it killed).
                running.ack()
        except Exception:  # whatever happens, the stuck process must go
            logger.exception("hard time limit: cleanup failed", extra={"event": "hard_time_limit_cleanup_failed"})
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            self._exit(HARD_LIMIT_EXIT)
