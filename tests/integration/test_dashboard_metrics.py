"""The Grafana dashboard and the alert rules against the live ``/metrics`` text of a real stack.

tests/unit/test_grafana_dashboard.py checks the metric names statically, against the
prometheus_client constructors in the code. This test runs the stack ``make run`` starts
(gateway, the three stages, registry, monitor with its beat, training), sends digits (and a
blank page, which preprocess fails as no_ink), labels them and lets the monitor report. Then
every metric the dashboard or the alerts query must appear in the Prometheus text that the
gateway, the stage workers and the monitor serve.

Counters with labels exist only after their first event. A few of them need events this
test does not cause: a promotion (deploys, swap time) or an LRU eviction. These are listed in
``EVENT_ONLY``. The unit test still checks that the code defines them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
import yaml

from digitflow.redis_client import connect
from tests.conftest import RedisServer, wait_until
from tests.integration.models_support import submit, wait_for_registry
from tests.integration.test_pipeline import blank_page, heldout_digits, paper_photo
from tests.stacks import Stack, start_stack
from tests.unit.test_grafana_dashboard import PROMETHEUS_SERIES, ROOT, dashboard, dashboard_queries, promql_metric_names

pytestmark = pytest.mark.slow
JOBS = 24
ENV = {
    "MONITOR_INTERVAL_S": "1", "MIN_JOBS": "10", "SAMPLE_SIZE": "20", "PERMUTATIONS": "20", "AUTO_RETRAIN": "false",
    "TASK_EVENTS": "false",
}  # fmt: skip
# Series that only exist after a promotion or an LRU eviction.
EVENT_ONLY = {
    "digitflow_model_deploys_total",
    "digitflow_model_swap_seconds_bucket",
    "digitflow_model_swap_seconds_sum",
    "digitflow_model_swap_seconds_count",
    "digitflow_model_evictions_total",
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", re.MULTILINE)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = redis_server.url(11)
    connect(url).flushdb()
    s = start_stack(url, tmp_path_factory.mktemp("dashboard"), env=ENV, monitoring=True)
    wait_for_registry(s, ("digits",), 1)
    yield s
    s.close()
    connect(url).flushdb()


def endpoints(stack: Stack) -> dict[str, str]:
    urls = {"gateway": f"{stack.base_url}/metrics"}
    urls |= {stage: stack.metrics_url(stage) for stage in ("preprocess", "inference", "postprocess")}
    urls["monitor"] = f"http://127.0.0.1:{stack.config.monitor_metrics_port}/metrics"
    return urls


def live_series(stack: Stack) -> dict[str, set[str]]:
    """Series name -> the services whose /metrics has a sample of it."""
    seen: dict[str, set[str]] = {}
    for service, url in endpoints(stack).items():
        for name in _SAMPLE.findall(requests.get(url, timeout=10).text):
            seen.setdefault(name, set()).add(service)
    return seen


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"] if "alert" in r]


def test_every_dashboard_and_alert_metric_is_served_live(stack: Stack) -> None:
    digits = heldout_digits(JOBS, seed=12)
    jobs = [(submit(stack, paper_photo(img, seed=i), "digits"), label) for i, (img, label) in enumerate(digits)]
    assert all(job["status"] == "succeeded" for job, _ in jobs), [j for j, _ in jobs if j["status"] != "succeeded"][:2]
    blank = stack.submit(blank_page(), "image/jpeg", wait=10).json()
    assert blank["status"] == "failed" and blank["error"]["code"] == "no_ink"
    for job, label in jobs:
        answer = stack.session.post(
            f"{stack.base_url}/v1/jobs/{job['job_id']}/feedback", json={"label": label}, timeout=10
        )
        assert answer.status_code == 200, answer.text

    wanted = {
        name for _, expr in [*dashboard_queries(dashboard()), *alert_queries()] for name in promql_metric_names(expr)
    } - PROMETHEUS_SERIES

    def missing() -> set[str]:
        return wanted - EVENT_ONLY - set(live_series(stack))

    # The monitor reports every MONITOR_INTERVAL_S; observed accuracy needs the feedback rows.
    wait_until(lambda: not missing(), 90, 1.0, what="every dashboard metric on a live endpoint")
    seen = live_series(stack)
    assert "monitor" in seen["digitflow_model_accuracy"] and "gateway" in seen["digitflow_queue_depth"]
    assert seen["digitflow_jobs_failed_total"] == {"preprocess"}
