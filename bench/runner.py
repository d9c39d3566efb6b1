"""One measurement: run a driver process (load generator or in-process loop), read CPU around it.

The driver prints ``START`` and ``END`` when its window opens and closes; CPU counters of every
watched service (and of the driver itself) are read at those two lines, so CPU per job covers
exactly the jobs the driver counted. The result becomes one row of the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.paths import CHECKOUT
from bench.procstats import CpuSnapshot, ProcStats


@dataclass(frozen=True)
class BenchConfig:
    """Knobs of one ``python -m bench`` run."""

    images_dir: Path
    var_dir: Path
    inflight: tuple[int, ...] = (1, 16, 64)
    warmup_s: float = 2.0
    duration_s: float = 8.0
    wait_s: float = 10.0
    batch_total: int = 1000
    batch_parts: int = 50
    batch_inflight: int = 4
    inprocess_batch: int = 32
    procs: int = os.cpu_count() or 1
    monolith_threads: int = 4
    log_level: str = "WARNING"
    # Extra environment for both digitflow scenarios (tuning experiments, e.g. BATCH_WAIT_MS).
    digitflow_env: tuple[tuple[str, str], ...] = ()
    # The peer's batching SLO (bench.bentoml_service): BentoML answers 503 to a request past it.
    bentoml_max_latency_ms: int = 1000


@dataclass
class Measurement:
    """What a driver reported plus the CPU seconds each service used inside its window."""

    scenario: str
    result: dict[str, Any]
    cpu_s: dict[str, float]
    # Mean jobs per batch message inside the window, by stage label (digitflow only).
    batch_sizes: dict[str, float] = field(default_factory=dict)


class DriverError(RuntimeError):
    """The driver process failed or printed no result; the message holds its stderr tail."""


Counters = Callable[[], dict[str, tuple[float, float]]]


def _mean_batches(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    out = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        if count > count0:
            out[stage] = round((total - total0) / (count - count0), 2)
    return out


def run_driver(
    scenario: str, driver: str, argv: list[str], stats: ProcStats, var_dir: Path, counters: Counters | None = None
) -> list[Measurement]:
    """Run ``python -m bench.<driver> argv...``, watched as service ``driver`` (``load`` or
    ``inprocess``); one measurement per START/END/RESULT it prints.

    Raises DriverError when it exits non-zero or without a RESULT line.
    """
    errlog = var_dir / "log" / f"{driver}.stderr.log"
    errlog.parent.mkdir(parents=True, exist_ok=True)
    module = f"bench.{driver}"
    with errlog.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv], stdout=subprocess.PIPE, stderr=err, cwd=CHECKOUT, text=True
        )
    stats.watch(driver, proc.pid)
    before: CpuSnapshot = {}
    cpu: dict[str, float] = {}
    batches_before: dict[str, tuple[float, float]] = {}
    batches: dict[str, float] = {}
    out: list[Measurement] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("START"):
                before = stats.cpu_snapshot()
                batches_before = counters() if counters else {}
            elif line.startswith("END"):
                cpu = ProcStats.cpu_delta(before, stats.cpu_snapshot())
                batches = _mean_batches(batches_before, counters()) if counters else {}
            elif line.startswith("RESULT "):
                out.append(Measurement(scenario, json.loads(line.removeprefix("RESULT ")), cpu, batches))
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stats.forget(driver)
    if not out or proc.returncode:
        tail = errlog.read_text(errors="replace")[-2000:]
        raise DriverError(f"{module} {' '.join(argv)} exited {proc.returncode} after {len(out)} results:\n{tail}")
    return out


def load_argv(cfg: BenchConfig, url: str, mode: str, inflight: int, warmup_s: float, duration_s: float) -> list[str]:
    wait_s = 30.0 if mode == "batch" else cfg.wait_s  # a 50-image request needs longer
    argv = ["--url", url, "--images", str(cfg.images_dir), "--mode", mode, "--inflight", str(inflight)]
    argv += ["--warmup", str(warmup_s), "--duration", str(duration_s), "--wait", f"{wait_s:g}"]
    if mode == "batch":
        argv += ["--total", str(cfg.batch_total), "--parts", str(cfg.batch_parts)]
    return argv


def run_inprocess(cfg: BenchConfig, stats: ProcStats) -> list[Measurement]:
    """Batch 1 and batched, one process per core (the same processes for both)."""
    argv = ["--images", str(cfg.images_dir), "--procs", str(cfg.procs), "--batches", f"1,{cfg.inprocess_batch}"]
    argv += ["--warmup", str(cfg.warmup_s), "--duration", str(cfg.duration_s)]
    return run_driver("inprocess", "inprocess", argv, stats, cfg.var_dir)


def run_http(
    scenario: str,
    cfg: BenchConfig,
    url: str,
    stats: ProcStats,
    modes: tuple[str, ...],
    counters: Counters | None = None,
) -> list[Measurement]:
    """Prime the system (models load, connections open), then every (mode, in-flight) pair,
    then the batch case."""
    prime_argv = load_argv(cfg, url, "prefer", 8, 0.0, max(1.5, cfg.warmup_s))
    prime = run_driver(scenario, "load", prime_argv, stats, cfg.var_dir)[0].result
    if prime["ok"] == 0:
        raise DriverError(f"{scenario}: no job succeeded while priming: {prime['failed']}")
    out = []
    for mode in modes:
        for inflight in cfg.inflight:
            argv = load_argv(cfg, url, mode, inflight, cfg.warmup_s, cfg.duration_s)
            out += run_driver(scenario, "load", argv, stats, cfg.var_dir, counters)
    argv = load_argv(cfg, url, "batch", cfg.batch_inflight, 0.0, 0.0)
    out += run_driver(scenario, "load", argv, stats, cfg.var_dir, counters)
    return out
