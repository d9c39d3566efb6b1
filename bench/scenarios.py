"""What each scenario of ``python -m bench`` starts and which cases it measures.

``inprocess``, ``monolith``, ``chain-per-job`` and ``digitflow`` run by default; ``traced``,
``defaults`` and ``bentoml`` only when named:

* ``traced``: ``digitflow`` with OpenTelemetry tracing on, exporting to a local sink;
* ``defaults``: digitflow as ``make run`` starts it, task events on, ``LOG_LEVEL`` INFO, the
  registry, the monitor with its beat, the training worker and Flower running (``--digitflow-env``
  does not reach it: it is the untuned baseline);
* ``bentoml``: the peer framework (``bench.bentoml_service``) in its own venv, built on first use
  (``bench.peer_venv``).

``variant_cost`` compares a variant of digitflow (``traced``, ``defaults``) with ``digitflow``
case by case.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.otlp_sink import otlp_sink
from bench.peer_venv import ensure_bentoml_venv
from bench.procstats import ProcStats
from bench.runner import BenchConfig, Measurement, run_http, run_inprocess
from bench.stacks import Stack, bentoml_stack, digitflow_stack, monolith_stack

SCENARIOS = ("inprocess", "monolith", "chain-per-job", "digitflow")
OPTIONAL_SCENARIOS = ("traced", "defaults", "bentoml")
# Scenarios that answer in one round trip: one row per level serves both poll and prefer.
ONE_ROUND_TRIP = ("monolith", "bentoml")


@contextmanager
def _watched(stack: Stack, stats: ProcStats) -> Iterator[Stack]:
    """Account the stack's services while the block runs."""
    for name, pid in stack.services.items():
        stats.watch(name, pid)
    try:
        yield stack
    finally:
        for name in stack.services:
            stats.forget(name)


def _check_alive(stack: Stack, scenario: str) -> None:
    """Raise RuntimeError naming any service that died, with the tail of its log."""
    for name in stack.dead():
        tail = (stack.log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{scenario}: service {name} died during the run; {stack.log_dir}/{name}.log ends:\n{tail}")


def _one_round_trip(out: list[Measurement]) -> list[Measurement]:
    for m in out:
        m.result["mode"] = "both" if m.result["mode"] == "prefer" else m.result["mode"]
    return out


def run_scenario(name: str, cfg: BenchConfig, stats: ProcStats) -> list[Measurement]:
    """Start what ``name`` measures, measure every case, stop it. Raises RuntimeError/OSError
    (a service died, the peer venv cannot be built) or bench.runner.DriverError."""
    if name == "inprocess":
        return run_inprocess(cfg, stats)
    if name == "monolith":
        with monolith_stack(cfg.var_dir / name, cfg.procs, cfg.monolith_threads) as stack, _watched(stack, stats):
            out = run_http(name, cfg, stack.url, stats, ("prefer",))
            _check_alive(stack, name)
        return _one_round_trip(out)
    if name == "bentoml":
        python = ensure_bentoml_venv()
        with bentoml_stack(cfg.var_dir / name, python, cfg.bentoml_max_latency_ms) as stack, _watched(stack, stats):
            out = run_http(name, cfg, stack.url, stats, ("prefer",), stack.batch_counters)
            _check_alive(stack, name)
        return _one_round_trip(out)
    if name == "defaults":
        with digitflow_stack(cfg.var_dir / name, {}, full=True) as stack, _watched(stack, stats):
            out = run_http(name, cfg, stack.url, stats, ("poll", "prefer"), stack.batch_counters)
            _check_alive(stack, name)
        return out
    env = {"TASK_EVENTS": "false", "LOG_LEVEL": cfg.log_level, **dict(cfg.digitflow_env)}
    if name == "chain-per-job":
        env["BATCH_MAX"] = "1"
    if name == "traced":
        with otlp_sink() as sink:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
            with digitflow_stack(cfg.var_dir / name, env) as stack, _watched(stack, stats):
                out = run_http(name, cfg, stack.url, stats, ("poll", "prefer"), stack.batch_counters)
                _check_alive(stack, name)
            print(f"  otlp sink: {sink.requests} exports, {sink.bytes / 1e6:.1f} MB", file=sys.stderr, flush=True)
        return out
    with digitflow_stack(cfg.var_dir / name, env) as stack, _watched(stack, stats):
        out = run_http(name, cfg, stack.url, stats, ("poll", "prefer"), stack.batch_counters)
        _check_alive(stack, name)
    return out


def variant_cost(rows: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """Per case: throughput, p50 and CPU per job of ``variant`` against ``digitflow``."""
    out = []
    for other in (r for r in rows if r["scenario"] == variant):
        base = next(
            (
                r
                for r in rows
                if r["scenario"] == "digitflow" and r["mode"] == other["mode"] and r["inflight"] == other["inflight"]
            ),
            None,
        )
        if base is None or not base["jobs_per_s"]:
            continue
        out.append(
            {
                "mode": other["mode"],
                "inflight": other["inflight"],
                "jobs_per_s": [base["jobs_per_s"], other["jobs_per_s"]],
                "p50_ms": [base["latency_ms"]["p50"], other["latency_ms"]["p50"]],
                "cpu_ms_per_job_system": [base["cpu_ms_per_job_system"], other["cpu_ms_per_job_system"]],
                "cpu_ms_per_job_added": round(other["cpu_ms_per_job_system"] - base["cpu_ms_per_job_system"], 3),
            }
        )
    return out


def render_variant(title: str, cost: list[dict[str, Any]]) -> str:
    """The comparison as lines of text (empty when the variant did not run)."""
    if not cost:
        return ""
    lines = [f"\n{title}: jobs/s, p50 ms, system CPU ms per job"]
    for t in cost:
        lines.append(
            f"  {t['mode']:>7} @{t['inflight']!s:<6} {t['jobs_per_s'][0]:.1f} -> {t['jobs_per_s'][1]:.1f} jobs/s"
            f"   p50 {t['p50_ms'][0]} -> {t['p50_ms'][1]}   CPU/job {t['cpu_ms_per_job_system'][0]} ->"
            f" {t['cpu_ms_per_job_system'][1]} ({t['cpu_ms_per_job_added']:+.3f})"
        )
    return "\n".join(lines)
