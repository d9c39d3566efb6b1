"""Turning measurements into the report: rows, ratios, targets, a table on stdout, JSON on disk.

Targets are reported (met / missed), never asserted: a benchmark states what it saw.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.preprocess_cost import targets as preprocess_targets
from bench.procstats import MemoryPeak
from bench.runner import Measurement

# Table columns; a service not named here (a new one in the stack) gets a column of its own.
SERVICES = ("gateway", "preprocess", "inference", "postprocess", "redis", "monolith", "bentoml", "inprocess")
NOT_MEASURED = ("load", "harness", "other")  # not part of the system under test
SHORT = {
    "gateway": "gw",
    "preprocess": "pre",
    "inference": "inf",
    "postprocess": "post",
    "redis": "redis",
    "monolith": "mono",
    "bentoml": "bento",
    "inprocess": "inproc",
    # What only the `defaults` scenario runs (make run's whole stack).
    "registry": "reg",
    "monitor": "mon",
    "monitor-beat": "beat",
    "training": "train",
    "flower": "flower",
    "load": "load",
    "harness": "harn",
    "other": "other",
}
# Peer frameworks measured beside digitflow (optional scenarios), each a ratio column.
PEERS = ("bentoml",)
# The ratio columns: (key in a ratio row, header, width).
RATIO_COLUMNS = (
    ("digitflow/monolith", "/monolith", 11),
    ("digitflow/chain-per-job", "/chain", 9),
    ("digitflow/inprocess", "/inproc", 9),
    ("digitflow/inprocess-batched", "/inproc-batched", 17),
    ("digitflow/bentoml", "/bentoml", 10),
)
# Where the table's ``batch`` column comes from: digitflow's gateway (jobs per chain), the
# in-process loop (images per forward pass), BentoML's batcher (requests per call).
BATCH_COLUMN_FROM = ("gateway", "inprocess", "bentoml")
# Above this share of the machine's CPU used by processes outside the benchmark, a row is flagged.
INTERFERENCE_SHARE = 0.10
MB = 1024 * 1024


def row_of(m: Measurement) -> dict[str, Any]:
    """One table row: throughput, latency percentiles, failures, accuracy, CPU ms per job."""
    res = m.result
    ok = int(res["ok"])
    lat = np.asarray(res["latencies_ms"], dtype=np.float64)
    pct = {f"p{q}": round(float(np.percentile(lat, q)), 2) if lat.size else None for q in (50, 95, 99)}
    cpu = {name: round(seconds * 1000.0 / ok, 3) if ok else None for name, seconds in m.cpu_s.items()}
    system = sum(v for k, v in cpu.items() if k not in NOT_MEASURED and v is not None)
    inflight = res["inflight"]
    capacity = res["window_s"] * (os.cpu_count() or 1)
    other_share = m.cpu_s.get("other", 0.0) / capacity if capacity else 0.0
    return {
        "scenario": m.scenario,
        "mode": res["mode"],
        "inflight": f"{inflight}x{res['parts']}" if res.get("parts") else inflight,
        "window_s": res["window_s"],
        "jobs": ok,
        "jobs_per_s": round(ok / res["window_s"], 2) if res["window_s"] else 0.0,
        "latency_ms": {**pct, "mean": round(float(lat.mean()), 2) if lat.size else None},
        "failed": sum(res["failed"].values()),
        "failures": res["failed"],
        "accuracy": round(res["correct"] / ok, 4) if ok else None,
        "http_requests": res.get("requests", 0),
        "reconnects": res.get("reconnects", 0),
        "cpu_ms_per_job": cpu,
        "cpu_ms_per_job_system": round(system, 3),
        "cpu_s": {k: round(v, 3) for k, v in m.cpu_s.items()},
        "server_timings_ms_mean": res.get("server_timings_ms", {}),
        "mean_batch_size": m.batch_sizes or ({"inprocess": res["batch"]} if "batch" in res else {}),
        "other_cpu_share": round(other_share, 3),
        "interference": other_share > INTERFERENCE_SHARE,
    }


def find(rows: list[dict[str, Any]], scenario: str, mode: str, inflight: object) -> dict[str, Any] | None:
    """The row of ``scenario`` in ``mode`` (any in-flight if None); the monolith's rows serve both modes."""
    for row in rows:
        same_load = inflight is None or row["inflight"] == inflight
        if row["scenario"] == scenario and same_load and row["mode"] in (mode, "both"):
            return row
    return None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or not b["jobs_per_s"]:
        return None
    return round(a["jobs_per_s"] / b["jobs_per_s"], 3)


def ratios(rows: list[dict[str, Any]], inflights: tuple[int, ...], batch_label: str) -> list[dict[str, Any]]:
    """digitflow's throughput over monolith, chain-per-job, in-process and each peer, case by case."""
    inproc_b1, inproc_batched = find(rows, "inprocess", "batch1", None), find(rows, "inprocess", "batched", None)
    cases: list[tuple[str, object]] = [(mode, n) for mode in ("poll", "prefer") for n in inflights]
    out = []
    for mode, n in [*cases, ("batch", batch_label)]:
        df = find(rows, "digitflow", mode, n)
        inproc = inproc_batched if mode == "batch" else inproc_b1
        out.append(
            {
                "mode": mode,
                "inflight": n,
                "digitflow/monolith": _ratio(df, find(rows, "monolith", mode, n)),
                "digitflow/chain-per-job": _ratio(df, find(rows, "chain-per-job", mode, n)),
                "digitflow/inprocess": _ratio(df, inproc),
                "digitflow/inprocess-batched": _ratio(df, inproc_batched),
                **{f"digitflow/{peer}": _ratio(df, find(rows, peer, mode, n)) for peer in PEERS},
            }
        )
    return out


def targets(
    rows: list[dict[str, Any]],
    ratio_rows: list[dict[str, Any]],
    memory: dict[str, Any],
    preprocessing: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The issue's targets, each with the value seen and whether it was met (``preprocessing``:
    bench.preprocess_cost's report, where it ran)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, higher_is_better: bool) -> None:
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    for r in ratio_rows:
        where = f"{r['mode']} @{r['inflight']}"
        if r["inflight"] == 64:
            add(f"digitflow/monolith {where} >= 1.0", r["digitflow/monolith"], 1.0, True)
            add(f"digitflow/chain-per-job {where} >= 2.5", r["digitflow/chain-per-job"], 2.5, True)
            df = find(rows, "digitflow", r["mode"], 64)
            add(f"digitflow system CPU ms/job {where} <= 6", df["cpu_ms_per_job_system"] if df else None, 6.0, False)
            # The bench's stripped settings (digitflow) and make run's own (defaults, where it ran).
            for scenario in ("digitflow", "defaults"):
                if scenario == "digitflow" or any(row["scenario"] == scenario for row in rows):
                    add(f"{scenario} p99/p50 {where} <= 2", tail_ratio(find(rows, scenario, r["mode"], 64)), 2.0, False)
        elif r["inflight"] == 16:
            add(f"digitflow/monolith {where} >= 0.9", r["digitflow/monolith"], 0.9, True)
        elif r["inflight"] == 1:
            df = find(rows, "digitflow", r["mode"], 1)
            add(f"digitflow p50 ms {where} <= 15", df["latency_ms"]["p50"] if df else None, 15.0, False)
        elif r["mode"] == "batch":
            add("digitflow/monolith batch >= 0.8", r["digitflow/monolith"], 0.8, True)
        if r["inflight"] in (16, 64):  # "digitflow should beat it on both"
            for peer in PEERS:  # a peer is optional: its target is listed only where it ran
                if r.get(f"digitflow/{peer}") is not None:
                    add(f"digitflow/{peer} {where} >= 1.0", r[f"digitflow/{peer}"], 1.0, True)
    for service in ("gateway", "preprocess", "postprocess"):
        peak = memory.get("digitflow", {}).get(service)
        add(f"{service} largest process RSS MB <= 150", peak["largest_mb"] if peak else None, 150.0, False)
    if preprocessing:
        for name, value, limit, higher in preprocess_targets(preprocessing):
            add(name, value, limit, higher)
    return out


def tail_ratio(row: dict[str, Any] | None) -> float | None:
    """p99 / p50 of a row; None when it has no latencies (nothing succeeded, or not measured)."""
    if not row or not row["latency_ms"]["p50"] or row["latency_ms"]["p99"] is None:
        return None
    return round(row["latency_ms"]["p99"] / row["latency_ms"]["p50"], 2)


def memory_of(peaks: dict[str, MemoryPeak]) -> dict[str, dict[str, float]]:
    return {
        name: {"peak_rss_mb": round(p.total / MB, 1), "largest_mb": round(p.largest / MB, 1), "processes": p.processes}
        for name, p in peaks.items()
    }


def _fmt(value: object, width: int) -> str:
    text = "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)
    return text.rjust(width)


def render(report: dict[str, Any]) -> str:
    """The human-readable report: results table, memory table, ratios, targets."""
    extra = sorted({k for r in report["rows"] for k in r["cpu_ms_per_job"]} - set(SERVICES) - set(NOT_MEASURED))
    services = [*SERVICES, *extra, *NOT_MEASURED]
    cols = [SHORT.get(s, s[:6]) for s in services]
    head = f"{'scenario':<14}{'mode':>7}{'infl':>6}{'jobs/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}"
    head += f"{'fail':>5}{'acc%':>6}{'batch':>6}"
    lines = [
        "Throughput, latency (ms, submit to answer) and CPU ms per job by process",
        "",
        head + "".join(c.rjust(7) for c in cols) + "   sys",
    ]
    for r in report["rows"]:
        lat = r["latency_ms"]
        acc = None if r["accuracy"] is None else round(r["accuracy"] * 100, 1)
        line = f"{r['scenario']:<14}{r['mode']:>7}{_fmt(r['inflight'], 6)}{_fmt(float(r['jobs_per_s']), 8)}"
        batch = next((r["mean_batch_size"][k] for k in BATCH_COLUMN_FROM if k in r["mean_batch_size"]), None)
        line += "".join(_fmt(lat[k], 8) for k in ("p50", "p95", "p99")) + _fmt(r["failed"], 5) + _fmt(acc, 6)
        line += _fmt(None if batch is None else float(batch), 6)
        line += "".join(_fmt(r["cpu_ms_per_job"].get(s), 7) for s in services) + _fmt(r["cpu_ms_per_job_system"], 6)
        lines.append(line + (" *" if r["interference"] else ""))
    lines.append(
        "batch = mean jobs per chain sent by the gateway (digitflow), per forward pass (in-process)"
        " or requests per batched call (bentoml)"
    )
    lines.append("sys = CPU of the system under test (excludes load generator, harness and other)")
    if any(r["interference"] for r in report["rows"]):
        share = f"{INTERFERENCE_SHARE:.0%}"
        lines.append(f"* other processes on this machine used over {share} of its CPU during that window: disturbed")
    lines += ["", "Peak RSS per service (MB): sum over its processes / largest process / processes"]
    for scenario, services in report["memory"].items():
        parts = [f"{n} {m['peak_rss_mb']:.0f}/{m['largest_mb']:.0f}/{m['processes']}" for n, m in services.items()]
        lines.append(f"  {scenario:<14}" + "   ".join(parts))
    lines += ["", *render_ratios(report["ratios"])]
    lines += render_peers(report["rows"])
    lines += ["", "Targets (reported, not asserted)"]
    if (inputs := report.get("meta", {}).get("inputs", "uploads")) != "uploads":
        lines.append(f"  (inputs {inputs}: the targets are defined on uploads, not these)")
    for t in report["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  {mark:>6}  {t['target']}: {t['value']}")
    for err in report.get("errors", []):
        lines.append(f"ERROR: {err}")
    return "\n".join(lines)


def render_ratios(ratio_rows: list[dict[str, Any]]) -> list[str]:
    """The ratios table; a peer's column only when some case has its ratio (it ran)."""
    columns = [c for c in RATIO_COLUMNS if c[0] not in _peer_keys() or any(r.get(c[0]) for r in ratio_rows)]
    lines = ["Ratios of jobs/s (digitflow / other)"]
    lines.append(f"  {'mode':>7}{'infl':>7}" + "".join(head.rjust(width) for _, head, width in columns))
    for r in ratio_rows:
        cells = [_fmt(None if r.get(key) is None else f"{r[key]:.2f}", width) for key, _, width in columns]
        lines.append(f"  {r['mode']:>7}{_fmt(r['inflight'], 7)}" + "".join(cells))
    return lines


def _peer_keys() -> set[str]:
    return {f"digitflow/{peer}" for peer in PEERS}


def render_peers(rows: list[dict[str, Any]]) -> list[str]:
    """Per peer case: lone-job and tail latency, and its failures as a share of what it was asked
    (a peer that sheds load answers fast: its errors are part of its result)."""
    lines = []
    for peer in PEERS:
        cases = [r for r in rows if r["scenario"] == peer]
        if not cases:
            continue
        lines += ["", f"{peer}: latency and errors per case (failed / answered, by code)"]
        for r in cases:
            asked = r["jobs"] + r["failed"]
            share = f"{r['failed'] / asked:.0%}" if asked else "-"
            codes = ", ".join(f"{k} {v}" for k, v in sorted(r["failures"].items())) or "none"
            lat = r["latency_ms"]
            lines.append(
                f"  {r['mode']:>7}{_fmt(r['inflight'], 6)}  p50 {lat['p50']} p99 {lat['p99']} ms"
                f"  failed {r['failed']}/{asked} ({share}): {codes}; reconnects {r['reconnects']}"
            )
    return lines


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
