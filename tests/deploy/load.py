"""Closed-loop load from the host against the gateway's published port, and the tally every
fault test prints: jobs accepted, succeeded, failed and duplicated, and the time from the
fault to the last job's answer.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.integration.test_pipeline import heldout_digits, paper_photo

TERMINAL = {"succeeded", "failed"}


def photos(n: int, seed: int = 0) -> list[tuple[bytes, int]]:
    """Held-out MNIST digits as phone photos (JPEG), with their labels."""
    return [(paper_photo(d, seed=seed + i), label) for i, (d, label) in enumerate(heldout_digits(n, seed=seed))]


@dataclass
class Tally:
    accepted: dict[str, int] = field(default_factory=dict)  # job id -> true label
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # submissions answered with no job

    def line(self, name: str, fault_at: float | None, done: Counter[str] | None = None) -> str:
        statuses = Counter(r["status"] for r in self.results.values())
        codes = Counter((r.get("error") or {}).get("code") for r in self.results.values() if r["status"] == "failed")
        duplicated = sum(1 for n in (done or Counter()).values() if n > 1)
        last = max(self.finished_at.values(), default=float("nan"))
        after = f", last answer {last - fault_at:.1f} s after the fault" if fault_at else ""
        return (
            f"[deploy] {name}: accepted {len(self.accepted)}, succeeded {statuses['succeeded']}, "
            f"failed {statuses['failed']} {dict(codes) if codes else ''}, duplicated {duplicated}, "
            f"refused {len(self.refused)}{after}"
        )


class Load:
    """``inflight`` clients, each submitting one photo and then waiting for its answer
    (``GET /v1/jobs/<id>?wait=``), until ``total`` jobs have been submitted."""

    def __init__(self, base_url: str, total: int, inflight: int, seed: int = 0) -> None:
        self.base_url = base_url
        self.images = photos(min(total, 200), seed=seed)
        self.total = total
        self.tally = Tally()
        self._next = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(inflight)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.tally.accepted)

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sum(t.is_alive() for t in self._threads)
        assert alive == 0, f"{alive} clients still waiting after {timeout_s:.0f} s: {self.unfinished()}"

    def unfinished(self) -> list[str]:
        with self._lock:
            return [j for j in self.tally.accepted if j not in self.tally.results]

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next - 1

    def _client(self) -> None:
        session = requests.Session()
        while (i := self._take()) is not None:
            data, label = self.images[i % len(self.images)]
            job_id = self._submit(session, data)
            if job_id is None:
                continue
            with self._lock:
                self.tally.accepted[job_id] = label
            result = self._await(session, job_id)
            with self._lock:
                self.tally.results[job_id] = result
                self.tally.finished_at[job_id] = time.time()

    def _submit(self, session: requests.Session, data: bytes) -> str | None:
        """One submission; a gateway that is away (connection refused, 503) is tried again, as a
        client would, for up to a minute: only a 202 is an accepted job."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = session.post(
                    f"{self.base_url}/v1/jobs", files={"image": ("d.jpg", data, "image/jpeg")}, timeout=30
                )
            except requests.RequestException:
                time.sleep(0.5)
                continue
            if response.status_code == 202:
                return str(response.json()["job_id"])
            if response.status_code not in (429, 503):
                with self._lock:
                    self.tally.refused.append(f"{response.status_code} {response.text[:200]}")
                return None
            time.sleep(0.5)
        with self._lock:
            self.tally.refused.append("no 202 within 60 s")
        return None

    def _await(self, session: requests.Session, job_id: str) -> dict[str, Any]:
        while True:
            try:
                response = session.get(f"{self.base_url}/v1/jobs/{job_id}", params={"wait": "20"}, timeout=40)
                if response.status_code == 200 and response.json()["status"] in TERMINAL:
                    return response.json()  # type: ignore[no-any-return]
            except requests.RequestException:
                pass  # the gateway may be away for a moment: the job is in Redis, ask again
            time.sleep(0.2)


class DoneWatcher:
    """Counts every completion the job store publishes (``df:done``, comma-separated job ids)
    by ``redis-cli SUBSCRIBE`` inside the Redis container: a job finished twice is counted twice.
    Redis is not published to the host, so the watcher runs where Redis is."""

    def __init__(self, popen: Callable[[list[str]], subprocess.Popen[str]]) -> None:
        self.counts: Counter[str] = Counter()
        self._popen = popen
        self._proc = popen(["redis-cli", "--no-auth-warning", "-a", "$REDIS_PASSWORD", "SUBSCRIBE", "df:done"])
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        window: list[str] = []
        for line in self._proc.stdout:
            window = [*window[-2:], line.strip()]
            if len(window) == 3 and window[0] == "message" and window[1] == "df:done":
                self.counts.update(window[2].split(","))
                window = []

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
