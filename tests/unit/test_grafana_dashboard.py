"""The Grafana dashboard cannot rot: its JSON parses, its provisioning points at it, its PromQL
parses, and every metric it queries is one the services export.

Which metrics the services export is read statically here: this test scans the project's
source for prometheus_client constructor calls (``Counter("digitflow_...", ...)``, ``Gauge(``,
``Histogram(``, ``Summary(``) and expands each to the series names Prometheus stores (``_total``
for counters, ``_bucket``/``_sum``/``_count`` for histograms). No service is started and nothing
of the project is imported, so it runs while the package layout moves. The same check against
the live ``/metrics`` text of a running stack is tests/integration/test_dashboard_metrics.py.

The helpers (``exported_series``, ``promql_metric_names``) are shared with the Prometheus rules
and Kubernetes manifest tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "digitflow.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
# Source folders that are not services (or not the project's): never scanned for metrics.
SKIP_DIRS = {".git", ".venv", "venv", "tests", "deploy", "docs", "var", "build", "node_modules", "__pycache__"}
# Series Prometheus itself adds to every scrape.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}

_CONSTRUCTOR = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"']([a-zA-Z_:][a-zA-Z0-9_:]*)[\"']")
_SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count"),
    "Info": ("_info",),
    "Enum": ("",),
}

# PromQL words that look like metric names but are not.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
    "inf", "nan", "atan2", "start", "end",
}  # fmt: skip
_AGGREGATION_MODIFIER = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])")


def source_files(root: Path = ROOT) -> Iterator[Path]:
    for path in root.rglob("*.py"):
        parts = set(path.relative_to(root).parts[:-1])
        if parts & SKIP_DIRS or any(p.endswith(".egg-info") for p in parts):
            continue
        yield path


def exported_metrics(root: Path = ROOT) -> dict[str, str]:
    """Metric name -> kind (Counter, Gauge, ...) of every prometheus_client metric the code defines."""
    found: dict[str, str] = {}
    for path in source_files(root):
        text = path.read_text(errors="replace")
        if "prometheus_client" not in text:
            continue
        for kind, name in _CONSTRUCTOR.findall(text):
            found[name] = kind
    return found


def exported_series(root: Path = ROOT) -> set[str]:
    """The series names Prometheus stores for those metrics (``x_total``, ``x_bucket``, ...)."""
    series: set[str] = set()
    for name, kind in exported_metrics(root).items():
        base = name.removesuffix("_total") if kind == "Counter" else name
        series.update(base + suffix for suffix in _SUFFIXES[kind])
    return series


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (strings, label matchers, ranges and functions dropped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = _AGGREGATION_MODIFIER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(1)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(word)
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    queries = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
            queries.append((f"variable ${var['name']}", inner.group(1) if inner else query))
    return queries


def as_plain_promql(expr: str) -> str:
    """A Grafana query with its variables replaced, so that Prometheus' own parser can read it."""
    for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_the_scanner_finds_the_services_metrics() -> None:
    """Guards the static scan itself: if the code moves, the scan must still see it."""
    metrics = exported_metrics()
    assert metrics.get("digitflow_jobs_processed") == "Counter"
    assert metrics.get("digitflow_stage_duration_seconds") == "Histogram"
    assert metrics.get("digitflow_queue_depth") == "Gauge"  # the gateway's live registry
    assert metrics.get("digitflow_drift_p_value") == "Gauge"  # the monitor's
    series = exported_series()
    assert {"digitflow_jobs_failed_total", "digitflow_batch_size_bucket", "digitflow_batch_size_count"} <= series
    assert "digitflow_jobs_failed" not in series


def test_the_promql_name_extractor() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (stage, le) (rate(digitflow_stage_duration_seconds_bucket{stage=~"$stage"}'
        "[$__rate_interval]))) / on (stage) group_left max without (instance) (digitflow_live_workers offset 5m)"
        ' > bool 0 or vector(0) and absent(up{job="a:b"})'
    )
    assert promql_metric_names(expr) == {"digitflow_stage_duration_seconds_bucket", "digitflow_live_workers", "up"}
    assert promql_metric_names('sum(rate(x_total{a="by (b)"}[1m])) / 1e3') == {"x_total"}


def test_dashboard_parses_and_has_what_operators_need() -> None:
    board = dashboard()
    assert board["uid"] == "digitflow" and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used = set().union(*(promql_metric_names(expr) for _, expr in dashboard_queries(board)))
    # Per stage: jobs/s, latency, queue depth and age, batch size, failures by code.
    for name in (
        "digitflow_jobs_processed_total", "digitflow_jobs_failed_total", "digitflow_stage_duration_seconds_bucket",
        "digitflow_queue_depth", "digitflow_queue_oldest_age_seconds", "digitflow_batch_size_bucket",
        "digitflow_live_workers",
        # Per model version: accuracy (observed and estimated), drift p-values, outlier rate.
        "digitflow_model_accuracy", "digitflow_drift_p_value", "digitflow_outlier_rate",
    ):  # fmt: skip
        assert name in used, f"the dashboard shows no {name}"
    exprs = " ".join(expr for _, expr in dashboard_queries(board))
    assert 'kind="observed"' in exprs and 'kind="estimated"' in exprs
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs


def test_every_dashboard_metric_is_exported_by_the_code() -> None:
    known = exported_series() | PROMETHEUS_SERIES
    unknown = {
        (where, name)
        for where, expr in dashboard_queries(dashboard())
        for name in promql_metric_names(expr)
        if name not in known
    }
    assert not unknown, f"metrics no service exports: {sorted(unknown)}"


def test_every_panel_uses_the_provisioned_datasource() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [s["uid"] for s in sources if s["type"] == "prometheus"] == [variables["datasource"]["current"]["value"]]
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "digitflow.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    grafana = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"].get("grafana")
    if grafana is None:
        pytest.skip("compose.yaml has no grafana service")
    mounts = [v.split(":") for v in grafana["volumes"]]
    assert ["./deploy/grafana/dashboards", path, "ro"] in mounts
    assert ["./deploy/grafana/provisioning", "/etc/grafana/provisioning", "ro"] in mounts


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana variables replaced)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    rules = [
        {"record": f"digitflow:dashboard_query_{i}", "expr": as_plain_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_queries(dashboard()))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
