"""``python -m bench`` (``make bench``): digitflow against the alternatives, on this machine.

    python -m bench [--scenarios inprocess,monolith,chain-per-job,digitflow] [--inflight 1,16,64]
                    [--duration S] [--warmup S] [--quick] [--inputs uploads|mnist28] [--out bench/results/latest.json]

Scenarios, all with the same model, preprocessing code and input images (see bench.images):
``inprocess`` (no queue, no HTTP: the physical limit), ``monolith`` (one Flask app under gunicorn
doing every stage in the request), ``chain-per-job`` (digitflow with BATCH_MAX=1) and
``digitflow`` (its defaults, with task events off); not run unless named: ``traced`` (tracing on),
``defaults`` (digitflow exactly as ``make run`` starts it) and ``bentoml`` (a peer framework with
adaptive batching, in its own venv): see bench.scenarios. Each HTTP scenario is measured at every
in-flight level, polling and with ``Prefer: wait`` (the monolith and BentoML answer in one round
trip, so they are measured once), plus one batch case. Prints a table, ratios and the issue's
targets and writes the JSON report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import preprocess_cost
from bench.images import make_images, make_mnist28, write_images
from bench.paths import CHECKOUT, MODELS
from bench.procstats import ProcStats
from bench.report import memory_of, ratios, render, row_of, targets, write_json
from bench.runner import BenchConfig, DriverError, Measurement
from bench.scenarios import OPTIONAL_SCENARIOS, SCENARIOS, render_variant, run_scenario, variant_cost


def _busy_share(stats: ProcStats, seconds: float = 1.0) -> float:
    """The share of the machine's CPU that other processes use while the benchmark is idle."""
    before = stats.cpu_snapshot()
    time.sleep(seconds)
    other = ProcStats.cpu_delta(before, stats.cpu_snapshot())["other"]
    return other / (seconds * (os.cpu_count() or 1))


def _progress(m: Measurement) -> None:
    row = row_of(m)
    lat = row["latency_ms"]
    print(
        f"  {row['scenario']:<14}{row['mode']:>7} @{row['inflight']!s:<6} {row['jobs_per_s']:8.1f} jobs/s  "
        f"p50 {lat['p50']} p99 {lat['p99']} ms  failed {row['failed']}",
        file=sys.stderr,
        flush=True,
    )


def _meta(cfg: BenchConfig, scenarios: list[str], inputs: str) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except OSError:
            return ""

    models = sorted((MODELS / "digits").glob("*/model.json"), key=lambda p: int(p.parent.name))
    model = json.loads(models[-1].read_text()) if models else {}
    config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
        "model": {k: model.get(k) for k in ("name", "version", "weights_sha256")},
        "scenarios": scenarios,
        "inputs": inputs,
        "config": config,
        "load_generator": "one process, one thread per job in flight, one keep-alive http.client connection each",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, from: " + ", ".join(SCENARIOS + OPTIONAL_SCENARIOS),
    )
    parser.add_argument("--inflight", default="1,16,64", help="jobs in flight, comma-separated")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds measured per case (default 8; 1.5 with --quick)"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds of warm-up per case (default 2; 0.5 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 2 minutes)")
    parser.add_argument("--images", type=int, default=200, help="distinct input images")
    parser.add_argument(
        "--inputs",
        choices=("uploads", "mnist28"),
        default="uploads",
        help="uploads: photos and canvas exports (bench.images); mnist28: 28x28 PNGs, almost no "
        "preprocessing, which leaves each system's own cost per job",
    )
    parser.add_argument("--batch-inflight", type=int, default=4, help="batch case: requests of 50 images in flight")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the digitflow services")
    parser.add_argument(
        "--digitflow-env", action="append", default=[], metavar="KEY=VALUE", help="extra env for digitflow (repeatable)"
    )
    parser.add_argument(
        "--bentoml-max-latency-ms",
        type=int,
        default=1000,
        help="bentoml scenario: max_latency_ms of its batchable API (BentoML answers 503 past it)",
    )
    parser.add_argument("--out", type=Path, default=CHECKOUT / "bench" / "results" / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, images) afterwards")
    return parser


def _preprocessing_cost(errors: list[str]) -> dict[str, Any] | None:
    """bench.preprocess_cost in its own process (torch stays out of the harness), after the
    scenarios so that it disturbs none of their CPU counters."""
    print("[preprocessing in-process]", file=sys.stderr, flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.preprocess_cost", "--json", "-"], cwd=CHECKOUT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        errors.append(f"preprocess_cost: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return None
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS) - set(OPTIONAL_SCENARIOS))
    if unknown:
        build_parser().error(f"unknown scenarios: {', '.join(unknown)}")
    if any("=" not in kv for kv in args.digitflow_env):
        build_parser().error("--digitflow-env takes KEY=VALUE")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds like Ctrl-C: stacks stop
    var_dir = Path(tempfile.mkdtemp(prefix="digitflow-bench-"))
    cfg = BenchConfig(
        images_dir=var_dir / "images",
        var_dir=var_dir,
        inflight=tuple(int(n) for n in args.inflight.split(",")),
        warmup_s=args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0),
        duration_s=args.duration if args.duration is not None else (1.5 if args.quick else 8.0),
        batch_total=200 if args.quick else 1000,
        batch_inflight=args.batch_inflight,
        log_level=args.log_level,
        digitflow_env=tuple((k, v) for k, _, v in (kv.partition("=") for kv in args.digitflow_env)),
        bentoml_max_latency_ms=args.bentoml_max_latency_ms,
    )
    print(f"bench: {', '.join(scenarios)}; run directory {var_dir}", file=sys.stderr, flush=True)
    write_images((make_mnist28 if args.inputs == "mnist28" else make_images)(args.images), cfg.images_dir)
    stats = ProcStats()
    stats.watch("harness", os.getpid(), recursive=False)  # this process: sampling, snapshots
    busy = _busy_share(stats)
    if busy > 0.1:
        print(
            f"bench: warning: {busy:.0%} of the CPU is busy before starting: results will be disturbed", file=sys.stderr
        )
    stats.start()
    measurements: list[Measurement] = []
    memory: dict[str, Any] = {}
    errors: list[str] = []
    try:
        for scenario in scenarios:
            print(f"[{scenario}]", file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                for m in run_scenario(scenario, cfg, stats):
                    _progress(m)
                    measurements.append(m)
            except (DriverError, RuntimeError, OSError) as exc:
                errors.append(f"{scenario}: {exc}")
                print(f"  failed: {exc}", file=sys.stderr, flush=True)
            memory[scenario] = memory_of(stats.reset_peaks())
            print(f"  ({time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        errors.append("interrupted")
    finally:
        stats.stop()
    preprocessing = _preprocessing_cost(errors) if "inprocess" in scenarios and args.inputs == "uploads" else None
    rows = [row_of(m) for m in measurements]
    for r in rows:  # a benchmark that quietly measured failures would be worthless: say so, exit 1
        if r["failed"]:
            errors.append(f"{r['scenario']} {r['mode']} @{r['inflight']}: {r['failed']} jobs failed: {r['failures']}")
    ratio_rows = ratios(rows, cfg.inflight, f"{cfg.batch_inflight}x{cfg.batch_parts}")
    meta = {**_meta(cfg, scenarios, args.inputs), "other_cpu_share_before_start": round(busy, 3)}
    report: dict[str, Any] = {"meta": meta, "rows": rows, "memory": memory, "ratios": ratio_rows}
    report["targets"] = targets(rows, ratio_rows, memory, preprocessing)
    report["preprocessing"] = preprocessing
    report["errors"] = errors
    report["tracing"] = variant_cost(rows, "traced")
    report["defaults_cost"] = variant_cost(rows, "defaults")
    write_json(report, args.out)
    print(render(report))
    if preprocessing:
        print("\n" + preprocess_cost.render(preprocessing))
    variants = {
        "tracing": "Tracing cost (digitflow -> traced)",
        "defaults_cost": "make run's defaults (digitflow -> defaults)",
    }
    for key, title in variants.items():
        if text := render_variant(title, report[key]):
            print(text)
    print(f"\nJSON report: {args.out}")
    if errors or args.keep:
        print(f"run directory kept (logs under log/): {var_dir}", file=sys.stderr)
    else:
        shutil.rmtree(var_dir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
