"""The ``/models`` page's canary panel in a real browser: the candidate's mode, share, decision
and both sides' live numbers, the suite results, and the admin's Abort button sending the
right request. The model's detail and canary answers are fixed (page routes), the rest of the
page is the real stack's; the end-to-end behaviour behind them is tests/integration/test_canary.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e import test_web
from tests.e2e.test_web import Pages, screenshot
from tests.e2e.test_web_monitoring import answer
from tests.integration.models_support import ADMIN_TOKEN

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
from playwright.sync_api import Route, expect  # noqa: E402

pytestmark = pytest.mark.e2e
stack = test_web.stack
browser = test_web.browser
pages = test_web.pages
NOW = time.time()
CANARY = {"version": "2", "mode": "canary", "share": 0.3, "since": NOW - 600, "by": "retrain", "base": "1"}
SUITES = {
    "passed": True,
    "margin": 0.01,
    "reason": "within 0.01 on every suite",
    "suites": {"mnist_heldout": {"candidate": 0.991, "production": 0.99}},
}


def side(jobs: int, accuracy: float) -> dict[str, Any]:
    return {
        "jobs": jobs,
        "labelled": jobs // 2,
        "accuracy": accuracy,
        "estimated_accuracy": 0.97,
        "outlier_rate": 0.03,
        "failed": 0,
        "failure_rate": 0.0,
    }


def detail() -> dict[str, Any]:
    version = {"version": "2", "metrics": {"heldout_accuracy": 0.991}, "labels": [str(i) for i in range(10)]}
    return {
        "name": "digits",
        "aliases": {"production": "1", "candidate": "2"},
        "production": "1",
        "history": ["1"],
        "versions": [{**version, "version": "1"}, version],
        "last_deploy": None,
        "updated_at": NOW,
        "canary": {**CANARY, "suites": SUITES},
        "servable": ["1", "2"],
        "releases": [{"version": "3", "outcome": "retired", "reason": "worse than production on accuracy"}],
    }


def canary_view() -> dict[str, Any]:
    numbers = {"candidate": side(64, 0.984), "production": side(150, 0.972)}
    state = {
        **CANARY,
        "suites": SUITES,
        "production": "1",
        "min_jobs": 50,
        "margin": 0.02,
        "numbers": numbers,
        "decision": "wait",
        "reason": "64 of 200 jobs",
    }
    return {"name": "digits", "production": "1", "canary": state, "servable": ["1", "2"], "releases": []}


def test_the_canary_panel_shows_the_release_and_aborts_it(pages: Pages) -> None:
    sent: list[tuple[str, str | None, Any]] = []

    def abort(route: Route) -> None:
        request = route.request
        sent.append((request.method, request.headers.get("authorization"), json.loads(request.post_data or "null")))
        body = {"aborted": {"name": "digits", "release": {"version": "2", "reason": "aborted on the models page"}}}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    routes = {
        "**/v1/models/digits": answer(200, detail()),
        "**/v1/models/digits/canary": answer(200, canary_view()),
        "**/v1/models/digits/canary/abort": abort,
    }
    page = pages.open("/models", routes=routes, viewport={"width": 1280, "height": 1000})
    panel = page.locator('section.model-card[data-model="digits"] .canary')
    expect(panel).to_have_attribute("data-canary", "2")
    expect(panel).to_contain_text("Candidate v2")
    expect(panel).to_contain_text("30.0% of live jobs")
    expect(panel.locator(".canary-decision")).to_contain_text("wait: 64 of 200 jobs")
    accuracy = panel.locator('tr[data-signal="accuracy"] td')
    expect(accuracy).to_have_text(["98.4%", "97.2%"])
    expect(panel.locator('tr[data-signal="jobs"] td')).to_have_text(["64", "150"])
    expect(panel.locator(".canary-suites")).to_contain_text("passed (within 0.01 on every suite)")
    notes = page.locator('section.model-card[data-model="digits"] .model-notes')
    expect(notes).to_contain_text("last release: v3 retired (worse than production on accuracy)")
    expect(notes).to_contain_text("pinnable: digits@1, digits@2")
    expect(panel.locator(".admin-action")).to_have_count(0)  # read-only without the token
    screenshot(page, "web-models-canary")

    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.locator("#admin-save").click()
    panel.get_by_role("button", name="Abort").click()
    expect(page.locator("#action-title")).to_have_text("Aborted: candidate v2 is retired")
    assert sent == [("POST", f"Bearer {ADMIN_TOKEN}", {"reason": "aborted on the models page"})]
    assert pages.problems == []
