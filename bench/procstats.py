"""CPU seconds and peak memory per service, from the operating system (psutil).

A service is a root process and all its descendants (gunicorn master + workers, a Celery main
process + its pool). CPU time is read from every process of the tree before and after a
measurement window; a process born inside the window counts from zero, and one that dies inside
it loses what it used since the first reading (the stacks here do not restart processes while
measured). Peak RSS is sampled every ``interval_s`` by a background thread; for each service it
keeps the peak of the tree's summed RSS (shared pages counted once per process, so an upper
bound) and the peak RSS of its largest single process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psutil

# (pid, create_time) identifies a process even if the pid is reused.
ProcKey = tuple[int, float]
CpuSnapshot = dict[str, dict[ProcKey, float]]
MACHINE, OTHER = "_machine", "other"


def tree(pid: int) -> list[psutil.Process]:
    """The process and its living descendants; empty if it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_of(procs: list[psutil.Process]) -> dict[ProcKey, float]:
    out: dict[ProcKey, float] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                out[(proc.pid, proc.create_time())] = times.user + times.system
        except psutil.Error:
            continue
    return out


@dataclass
class MemoryPeak:
    """Peak RSS (bytes) of a service: its tree's sum and its largest process."""

    total: int = 0
    largest: int = 0
    processes: int = 0


@dataclass
class ProcStats:
    """Services by name -> root pid; CPU snapshots on demand, RSS peaks in the background."""

    interval_s: float = 0.2
    roots: dict[str, int] = field(default_factory=dict)
    shallow: set[str] = field(default_factory=set)
    peaks: dict[str, MemoryPeak] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, name: str, pid: int, recursive: bool = True) -> None:
        """Account ``pid`` (and its descendants, if ``recursive``) as service ``name`` from now on."""
        with self._lock:
            self.roots[name] = pid
            if not recursive:
                self.shallow.add(name)
            self.peaks.setdefault(name, MemoryPeak())

    def _procs(self, name: str, pid: int) -> list[psutil.Process]:
        if name not in self.shallow:
            return tree(pid)
        try:
            return [psutil.Process(pid)]
        except psutil.Error:
            return []

    def forget(self, name: str) -> None:
        with self._lock:
            self.roots.pop(name, None)

    def cpu_snapshot(self) -> CpuSnapshot:
        """CPU seconds so far of every process of every watched service, and of the machine."""
        with self._lock:
            roots = dict(self.roots)
        snapshot = {name: _cpu_of(self._procs(name, pid)) for name, pid in roots.items()}
        total = psutil.cpu_times()
        busy = total.user + total.system + sum(getattr(total, f, 0.0) for f in ("nice", "irq", "softirq"))
        snapshot[MACHINE] = {(0, 0.0): busy}
        return snapshot

    @staticmethod
    def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        """CPU seconds each service used between two snapshots, plus ``other``: what the rest
        of the machine used (this harness, and anything else running: a sign of interference)."""
        out: dict[str, float] = {}
        for name, procs in after.items():
            earlier = before.get(name, {})
            out[name] = sum(max(0.0, cpu - earlier.get(key, 0.0)) for key, cpu in procs.items())
        machine = out.pop(MACHINE, 0.0)
        out[OTHER] = max(0.0, machine - sum(out.values()))
        return out

    def sample_memory(self) -> None:
        with self._lock:
            roots = dict(self.roots)
        for name, pid in roots.items():
            sizes = []
            for proc in self._procs(name, pid):
                try:
                    sizes.append(proc.memory_info().rss)
                except psutil.Error:
                    continue
            with self._lock:
                peak = self.peaks.setdefault(name, MemoryPeak())
                peak.total = max(peak.total, sum(sizes))
                peak.largest = max(peak.largest, max(sizes, default=0))
                peak.processes = max(peak.processes, len(sizes))

    def reset_peaks(self) -> dict[str, MemoryPeak]:
        """Return the peaks so far and start new ones (one set per scenario)."""
        with self._lock:
            peaks, self.peaks = self.peaks, {name: MemoryPeak() for name in self.roots}
        return peaks

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_memory()
