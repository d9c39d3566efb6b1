"""Micro-batching: jobs arriving close together travel through the pipeline as one chain.

Rule (one thread per gateway process), with ``in_flight`` this process's unfinished batches:
  * idle (``in_flight == 0``): the waiting jobs leave at once, so a lone job is never delayed;
  * busy with room (``0 < in_flight < max_in_flight``): a batch leaves when ``batch_max`` jobs
    wait or the oldest has waited ``wait_s``, whichever comes first;
  * full (``in_flight >= max_in_flight``): jobs wait here for a slot.
Under load the cap fills, the backlog waits here instead of in Redis (where the overload check
sees its age), and batches form by themselves: measured, letting batches leave while the cap
was full gave batches of 4-5 jobs and a third of the throughput. A batch's slot frees when all
its jobs are finished (the completion listener tells us) or after ``slot_timeout_s``, a safety
net for lost batches. The cap can change at run time (``set_max_in_flight``): the gateway sizes
it to the preprocess fleet it sees, so scaling workers out is not throttled here.

A send that fails goes to ``on_send_error``. When that settles the jobs (records them failed) it
returns True; when it returns False or raises (the broker is away, and with it the job store),
the jobs go back to the head of the queue and the next send waits a backoff (RETRY_DELAYS_S),
so a Redis restart delays accepted jobs instead of leaving them queued until their deadline.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from digitflow.messages import Item

logger = logging.getLogger("gateway.batcher")
SendFn = Callable[[str, list[Item]], None]
# Waits before re-sending after consecutive failures: short, so jobs leave soon after Redis is
# back; capped, so an outage costs one attempt every 2 s, not a busy loop.
RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class _InFlight:
    remaining: set[str]
    sent_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        send: SendFn,
        batch_max: int,
        wait_s: float,
        max_in_flight: int,
        slot_timeout_s: float = 30.0,
        on_send_error: Callable[[list[Item], Exception], bool] | None = None,
    ) -> None:
        self._send = send
        self.batch_max, self.wait_s, self.max_in_flight = batch_max, wait_s, max_in_flight
        self.slot_timeout_s = slot_timeout_s
        self._on_send_error = on_send_error
        self._pending: deque[tuple[float, Item]] = deque()
        self._in_flight: dict[str, _InFlight] = {}
        self._batch_of: dict[str, str] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failures = 0  # consecutive failed sends
        self._retry_at = 0.0  # monotonic time before which no batch leaves

    def submit(self, items: Sequence[Item]) -> None:
        with self._cond:
            if self._thread is None:
                # Started lazily, in the process that serves requests (after gateway.serve forks its processes).
                self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
                self._thread.start()
            now = time.monotonic()
            was_empty = not self._pending
            self._pending.extend((now, item) for item in items)
            # Wake the loop only when its decision can change: the first waiting job (it sends at
            # once when idle, or starts the wait bound) and a full batch. Waking it for every job
            # cost about a tenth of the gateway's CPU at 16 jobs in flight.
            if was_empty or len(self._pending) >= self.batch_max:
                self._cond.notify()

    def finished(self, job_ids: Iterable[str]) -> None:
        """Completion listener callback: free the slots of batches whose jobs all finished."""
        with self._cond:
            freed = False
            for job_id in job_ids:
                batch_id = self._batch_of.pop(job_id, None)
                if batch_id is None:
                    continue
                entry = self._in_flight.get(batch_id)
                if entry is not None:
                    entry.remaining.discard(job_id)
                    if not entry.remaining:
                        del self._in_flight[batch_id]
                        freed = True
            if freed:
                self._cond.notify()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def oldest_wait_s(self) -> float:
        """How long the oldest job not yet sent has waited here (0 when none waits)."""
        with self._cond:
            return time.monotonic() - self._pending[0][0] if self._pending else 0.0

    def set_max_in_flight(self, value: int) -> None:
        with self._cond:
            if value != self.max_in_flight:
                self.max_in_flight = max(1, value)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _expire_slots(self, now: float) -> None:
        for batch_id, entry in list(self._in_flight.items()):
            if now - entry.sent_at > self.slot_timeout_s:
                for job_id in entry.remaining:
                    self._batch_of.pop(job_id, None)
                del self._in_flight[batch_id]

    def _next_batch(self) -> tuple[str, list[tuple[float, Item]]] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                self._expire_slots(now)
                if self._pending and now < self._retry_at:
                    self._cond.wait(timeout=self._retry_at - now)
                elif self._pending:
                    busy = len(self._in_flight)
                    waited = now - self._pending[0][0]
                    if busy == 0 or (
                        busy < self.max_in_flight and (len(self._pending) >= self.batch_max or waited >= self.wait_s)
                    ):
                        break
                    # Wake for the wait bound (when there is room) or a lost slot's timeout.
                    expiry = min((e.sent_at for e in self._in_flight.values()), default=now) + self.slot_timeout_s
                    timeout = expiry - now
                    if busy < self.max_in_flight:
                        timeout = min(timeout, self.wait_s - waited)
                    self._cond.wait(timeout=max(0.001, timeout))
                else:
                    self._cond.wait(timeout=1.0)
            n = min(self.batch_max, len(self._pending))
            entries = [self._pending.popleft() for _ in range(n)]
            batch_id = uuid.uuid4().hex[:16]
            self._in_flight[batch_id] = _InFlight({item["job_id"] for _, item in entries})
            for _, item in entries:
                self._batch_of[item["job_id"]] = batch_id
            return batch_id, entries

    def _loop(self) -> None:
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            batch_id, entries = nxt
            items = [item for _, item in entries]
            try:
                self._send(batch_id, items)
            except Exception as exc:  # broker unreachable: the jobs must not vanish silently
                logger.exception("sending batch failed", extra={"event": "batch_send_failed", "batch_id": batch_id})
                self.finished(item["job_id"] for item in items)
                if not self._settle(items, exc):
                    self._requeue(entries)
            else:
                self._failures = 0

    def _settle(self, items: list[Item], exc: Exception) -> bool:
        if self._on_send_error is None:
            return False
        try:
            return self._on_send_error(items, exc)
        except Exception:
            logger.exception("could not record the failed batch", extra={"event": "batch_fail_unrecorded"})
            return False

    def _requeue(self, entries: list[tuple[float, Item]]) -> None:
        """Put unsent jobs back at the head of the queue, keeping their wait, and back off."""
        delay = RETRY_DELAYS_S[min(self._failures, len(RETRY_DELAYS_S) - 1)]
        self._failures += 1
        with self._cond:
            self._pending.extendleft(reversed(entries))
            self._retry_at = time.monotonic() + delay
        logger.warning(
            "batch kept for retry",
            extra={"event": "batch_send_retry", "jobs": len(entries), "retry_in_s": delay, "attempt": self._failures},
        )
