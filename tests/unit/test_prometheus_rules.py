"""The Prometheus configuration and alert rules of deploy/prometheus cannot rot.

``promtool`` (Debian package ``prometheus``) checks the config and the rules and runs the
rules' unit tests (deploy/prometheus/alerts_test.yml); without promtool those tests skip. The
metric names in the rules are checked against the metrics the code defines, statically (see
tests/unit/test_grafana_dashboard.py), and the scrape jobs against compose.yaml's services.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_grafana_dashboard import PROMETHEUS_SERIES, exported_series, promql_metric_names

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
# The situations issue 12 asks an alert for, and the rules that cover them.
REQUIRED_ALERTS = {
    "DigitflowStageWithoutWorker",  # a stage with no live worker
    "DigitflowQueueOldestJobAge",  # queue age over a bound
    "DigitflowStageFailureRate",  # failure rate by stage
    "DigitflowDriftDetected",  # drift
    "DigitflowAccuracyDrop",  # accuracy
    "DigitflowModelDeployFailed",  # a failed deploy
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`: apt-get install prometheus)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=PROM)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_config() -> None:
    """Also loads the rule files the config names (alerts.yml, relative to the config)."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist_with_severity_and_summary() -> None:
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(alerts) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    untested = REQUIRED_ALERTS - fired
    assert not untested, f"no promtool test shows these alerts firing: {sorted(untested)}"


def test_rules_use_only_metrics_the_code_exports() -> None:
    known = exported_series() | PROMETHEUS_SERIES
    unknown = {
        (rule.get("alert") or rule.get("record"), name)
        for rule in rules()
        for name in promql_metric_names(rule["expr"])
    }
    unknown = {(where, name) for where, name in unknown if name not in known}
    assert not unknown, f"metrics no service exports: {sorted(unknown)}"


def test_every_compose_service_with_metrics_is_scraped() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"  # one record per container: scaled services are all scraped
            for name in sd["names"]:
                scraped[name] = sd["port"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                scraped[host] = int(port)
    assert scraped.get("gateway") == 8000
    workers = {
        name: service
        for name, service in compose.items()
        if service.get("environment", {}).get("METRICS_PORT") not in (None, "0")
    }
    assert {"preprocess_worker", "inference_worker", "postprocess_worker"} <= set(workers)
    for name, service in workers.items():
        assert scraped.get(name) == int(service["environment"]["METRICS_PORT"]), f"{name} is not scraped"
    assert set(scraped) - {"localhost"} <= set(compose), "a scrape target that compose.yaml does not run"
