"""The ``/monitoring`` page in a real browser against a real stack.

``GET /v1/monitoring/<model>`` is answered by the test with a report built to the endpoint's
contract (48 hourly buckets with a drift episode, alerts and a retraining run), so the charts are
checked whatever the monitor has seen; one test lets the stack answer for itself (no report yet:
a 404, or an empty report) and checks the page says so. Screenshots land in ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e import test_web
from tests.e2e.test_web import Pages, screenshot
from tests.stacks import Stack

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
from playwright.sync_api import Locator, Page, Route, expect  # noqa: E402

pytestmark = pytest.mark.e2e

HOUR = 3600.0
BUCKETS = 48
DRIFT = range(30, 39)  # buckets of the drift episode: more 1s and 7s, lower confidence
ACCURACY_DROP = range(33, 37)
RETRAIN_AT = 38
DESKTOP = {"width": 1280, "height": 900}
CHARTS = ("chart-accuracy", "chart-psi", "chart-ks", "chart-mmd", "chart-outliers", "chart-traffic", "chart-mix")

# The stack, browser and page opener of test_web: one stack for every page's tests.
stack = test_web.stack
browser = test_web.browser
pages = test_web.pages


def class_mix(i: int) -> list[float]:
    """Roughly uniform digits; during the drift episode 1s and 7s take over."""
    mix = [0.1 + 0.01 * math.sin(i * 0.7 + k) for k in range(10)]
    if i in DRIFT:
        mix[1] += 0.12
        mix[7] += 0.1
    total = sum(mix)
    return [round(m / total, 4) for m in mix]


def bucket(i: int, t: float) -> dict[str, Any]:
    drift = i in DRIFT
    jobs = int(60 + 40 * math.sin(i / 24 * 2 * math.pi) + (30 if drift else 0))
    labelled = 0 if i in (5, 6) else max(3, jobs // 10)
    alerts = []
    if drift:
        alerts += ["prediction_drift", "input_drift"]
    if i in ACCURACY_DROP:
        alerts.append("accuracy_drop")
    return {
        "t": t,
        "jobs": jobs,
        "labelled": labelled,
        "accuracy": None if labelled == 0 else round((0.86 if i in ACCURACY_DROP else 0.975) - 0.01 * (i % 3), 3),
        "estimated_accuracy": round((0.9 if drift else 0.978) + 0.004 * math.sin(i), 4),
        "outlier_rate": round((0.12 if drift else 0.03) + 0.01 * math.cos(i), 4),
        "psi": round((0.31 if drift else 0.03) + 0.01 * math.sin(i * 1.3), 4),
        "confidence_ks": round((0.22 if drift else 0.05) + 0.01 * math.cos(i), 4),
        "mmd": round((0.045 if drift else 0.008) + 0.002 * math.sin(i), 5),
        "class_mix": class_mix(i),
        "alerts": alerts,
    }


def window(jobs: int, labelled: int, accuracy: float | None, psi: float, drifting: bool) -> dict[str, Any]:
    """One of a version's ``windows``: the last hour, day or week."""
    feature = {"ks": 0.21 if drifting else 0.04, "p_value": 0.0008 if drifting else 0.41}
    mmd = {"mmd": 0.031 if drifting else 0.007, "p_value": 0.002 if drifting else 0.5}
    return {
        "jobs": jobs,
        "labelled": labelled,
        "accuracy": accuracy,
        "estimated_accuracy": 0.93 if drifting else 0.977,
        "outlier_rate": 0.07 if drifting else 0.03,
        "prediction_drift": {"chi2": 41.2, "p_value": 0.0004 if drifting else 0.52, "psi": psi, "alert": drifting},
        "confidence_drift": {"ks": 0.09, "p_value": 0.04, "alert": False},
        "input_drift": {
            "ink_ratio": feature,
            "mean_intensity": feature,
            "aspect": {"ks": 0.03, "p_value": 0.7},
            "embedding_mmd": mmd,
            "alert": drifting,
        },
        "class_mix": class_mix(33 if drifting else 40),
    }


def empty_window() -> dict[str, Any]:
    keys = ("accuracy", "estimated_accuracy", "outlier_rate", "prediction_drift", "confidence_drift", "input_drift")
    return {"jobs": 0, "labelled": 0, **dict.fromkeys(keys), "class_mix": None}


def monitoring_report(now: float | None = None) -> dict[str, Any]:
    """A report as GET /v1/monitoring/digits answers it (see the endpoint's contract)."""
    end = math.floor((now or time.time()) / HOUR) * HOUR
    times = [end - (BUCKETS - i) * HOUR for i in range(BUCKETS)]
    series = [bucket(i, t) for i, t in enumerate(times)]
    return {
        "model": "digits",
        "generated_at": end + 120,
        "thresholds": {"p_value": 0.01, "psi": 0.2, "accuracy_drop": 0.05, "outlier_rate": 0.2},
        "versions": [
            {
                "version": "2",
                "production": True,
                "deployed_at": end - 20 * 24 * HOUR,
                "reference": {"heldout_accuracy": 0.99, "n": 1000},
                "windows": {
                    "1h": window(62, 6, 0.967, 0.04, False),
                    "1d": window(1710, 171, 0.93, 0.27, True),
                    "7d": window(11020, 1090, 0.962, 0.09, False),
                },
                "series": series,
                "accuracy_by_age": [
                    {"age": "day 1", "labelled": 40, "accuracy": 0.985},
                    {"age": "week 1", "labelled": 310, "accuracy": 0.974},
                    {"age": "month 1", "labelled": 1190, "accuracy": 0.951},
                    {"age": "quarter 1", "labelled": 0, "accuracy": None},
                ],
                "alerts": [
                    alert("prediction_drift", 0.27, 0.0004, 0.2, times[DRIFT.start]),
                    alert("input_drift", 0.031, 0.002, 0.01, times[DRIFT.start]),
                ],
            },
            {
                "version": "3",
                "production": False,
                "deployed_at": None,
                "reference": {"heldout_accuracy": 0.985, "n": 1000},
                "windows": {w: empty_window() for w in ("1h", "1d", "7d")},
                "series": [],
                "accuracy_by_age": [],
                "alerts": [],
            },
        ],
        "retraining": [
            retraining(end - 20 * 24 * HOUR - 600, "manual", "2", True, "better on recent feedback (0.97 vs 0.95)"),
            retraining(times[RETRAIN_AT], "drift", "3", False, "not better on recent feedback (0.95 vs 0.96)"),
        ],
    }


def alert(kind: str, statistic: float, p_value: float, threshold: float, since: float) -> dict[str, Any]:
    return {
        "kind": kind,
        "window": "1d",
        "statistic": statistic,
        "p_value": p_value,
        "threshold": threshold,
        "since": since,
    }


def retraining(at: float, trigger: str, version: str, promoted: bool, why: str) -> dict[str, Any]:
    reason = f"{why}, held-out 0.985 vs 0.990 within margin 0.01"
    return {"at": at, "trigger": trigger, "new_version": version, "promoted": promoted, "reason": reason}


def answer(status: int, body: dict[str, Any]) -> Callable[[Route], None]:
    def fulfil(route: Route) -> None:
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    return fulfil


def not_found(model: str) -> Callable[[Route], None]:
    message = f"no monitoring report for {model!r} yet"
    return answer(404, {"error": {"code": "model_not_found", "message": message, "details": {"model": model}}})


def chart(page: Page, chart_id: str) -> Locator:
    return page.locator(f"#{chart_id} svg.chart-svg")


def test_charts_alerts_and_retraining_from_a_report(pages: Pages) -> None:
    routes = {
        "**/v1/monitoring/digits": answer(200, monitoring_report()),
        "**/v1/monitoring/fashion": not_found("fashion"),
    }
    page = pages.open("/monitoring", routes=routes, viewport=DESKTOP)
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Monitoring")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#monitor-status")).to_contain_text("digits v2 (production)")
    expect(page.locator("#model-select option")).to_have_text(["digits", "fashion"])

    # Every time chart is drawn: accuracy has its two lines over the 48 buckets, with thresholds.
    for chart_id in CHARTS:
        expect(chart(page, chart_id)).to_be_visible()
        expect(chart(page, chart_id).locator(".axis text").first).to_be_visible()
    lines = chart(page, "chart-accuracy").locator(".series path")
    expect(lines).to_have_count(2)
    for k in range(2):
        assert (lines.nth(k).get_attribute("d") or "").count("L") >= 40  # a line through (nearly) every bucket
    expect(chart(page, "chart-accuracy").locator(".threshold")).to_have_count(2)  # held-out, and the alert floor
    expect(chart(page, "chart-psi").locator(".threshold-label")).to_have_text("alert 0.2")
    # Class mix: stacked bars, ten classes per bucket, and a legend naming each class.
    assert chart(page, "chart-mix").locator(".bars rect").count() >= BUCKETS * 9
    expect(page.locator("#mix-legend li")).to_have_count(11)
    expect(page.locator("#accuracy-legend")).to_contain_text("Estimated")

    # The alerts: a red band over the drift episode in the time charts, the list, the tiles.
    band = chart(page, "chart-accuracy").locator(".alert-band")
    expect(band).to_have_count(1)  # the episode's buckets, merged into one band
    assert float(band.get_attribute("width") or 0) > 50
    expect(chart(page, "chart-accuracy").locator(".alert-band title")).to_contain_text("Prediction drift")
    expect(chart(page, "chart-mix").locator(".alert-strip")).to_have_count(1)
    expect(page.locator("#alert-list .alert-item")).to_have_count(2)
    expect(page.locator("#alert-list")).to_contain_text("Prediction drift")
    expect(page.locator("#alert-count")).to_have_text("2")
    expect(page.locator(".tile.alert")).to_contain_text(["Active alerts"])
    expect(page.locator("#windows-table td.alert")).to_have_count(2)  # PSI and MMD over the last day

    # Hovering a bucket of the episode shows its values and alerts.
    box = chart(page, "chart-accuracy").bounding_box()
    assert box is not None
    x = box["x"] + 44 + (box["width"] - 56) * (ACCURACY_DROP.start + 0.5) / BUCKETS  # the plot starts 44 px in
    page.mouse.move(x, box["y"] + box["height"] / 2)
    tip = page.locator("#chart-accuracy .chart-tip")
    expect(tip).to_contain_text("Alert: Prediction drift, Input drift, Accuracy drop")

    # The retraining run is marked on the time charts and listed; so is accuracy by age.
    expect(chart(page, "chart-accuracy").locator(".marker-label")).to_have_text("retrain → v3 (not promoted)")
    expect(page.locator("#retraining-table tbody tr")).to_have_count(2)
    expect(page.locator("#retraining-table tbody tr").first).to_contain_text("not promoted")
    expect(page.locator("#age-bars li[aria-label]")).to_have_count(4)
    expect(page.locator("#age-bars")).to_contain_text("day 1")
    screenshot(page, "web-monitoring")

    # Another version with no traffic yet: each chart says so.
    page.get_by_label("Version", exact=True).select_option("3")
    expect(page.locator("#chart-accuracy .chart-empty")).to_have_text("No traffic for v3 yet.")
    expect(page.locator("#alert-list")).to_have_text("No active alerts.")

    # Another model with no report: the empty state.
    page.get_by_label("Model", exact=True).select_option("fashion")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty")).to_contain_text("No monitoring data yet")
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.url.endswith("/monitoring?model=fashion")
    assert pages.problems == []


def test_monitoring_on_a_phone_sized_screen(pages: Pages) -> None:
    routes = {"**/v1/monitoring/digits": answer(200, monitoring_report())}
    page = pages.open(
        "/monitoring", routes=routes, viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    expect(chart(page, "chart-mix")).to_be_visible()
    box = chart(page, "chart-accuracy").bounding_box()
    assert box is not None and box["width"] <= 390
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"horizontal scrolling on a phone: content {widths[0]} px, screen {widths[1]} px"
    screenshot(page, "web-monitoring-phone")
    assert pages.problems == []


def test_without_a_report_the_page_says_so(pages: Pages, stack: Stack) -> None:
    """No interception: the stack answers for itself. Before the monitor has reported (or while the
    endpoint does not exist) that is a 404 or a report without versions: the page says so."""
    page = pages.open("/", viewport=DESKTOP)
    with page.expect_response(re.compile(r"/v1/monitoring/digits$")) as answered:
        page.goto(stack.base_url + "/monitoring?model=digits")
    response = answered.value
    assert response.status in (200, 404), response.status
    if response.status == 404 or not response.json().get("versions"):
        expect(page.locator("#empty")).to_be_visible()
        expect(page.locator("#empty-title")).to_have_text("No monitoring data yet")
        expect(page.locator("#empty-text")).to_contain_text("digits")
        expect(page.locator("#monitor-status")).to_have_text("No monitoring data yet for digits.")
        expect(page.locator("#dashboard")).to_be_hidden()
        screenshot(page, "web-monitoring-empty")
    else:  # the monitor already reported on this stack's traffic
        expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#monitor-error")).to_be_hidden()
    assert pages.problems == []
