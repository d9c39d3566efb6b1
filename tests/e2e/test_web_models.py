"""The ``/models`` page in a real browser against a real stack with the registry service and a real
MLflow registry on SQLite: the shipped models are listed with production marked; with the admin
token (and only with the right one) a version is promoted and rolled back from the page.

Fixtures and helpers come from ``test_web``; screenshots land in ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from digitflow.settings import shipped_models_dir
from tests.e2e import test_web
from tests.e2e.test_web import Pages, screenshot
from tests.integration.models_support import ADMIN_TOKEN, production, store_of, sync_view
from tests.model_dirs import copy_of
from tests.stacks import Stack

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
from playwright.sync_api import Locator, Page, expect  # noqa: E402

pytestmark = pytest.mark.e2e

DEPLOY_TIMEOUT_MS = 30_000  # a promotion returns once every inference process switched
DESKTOP = {"width": 1280, "height": 900}

# The stack, browser and page opener of test_web: one stack for every page's tests.
stack = test_web.stack
browser = test_web.browser
pages = test_web.pages


def card(page: Page, name: str) -> Locator:
    return page.locator(f'section.model-card[data-model="{name}"]')


def use_token(page: Page, token: str) -> None:
    page.get_by_label("Admin token").fill(token)
    page.locator("#admin-save").click()


def test_every_model_is_listed_with_production_marked(pages: Pages) -> None:
    page = pages.open("/models", viewport=DESKTOP)
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Models")
    for href in ("/", "/models", "/monitoring", "/metrics"):
        expect(page.locator(f'header nav a[href="{href}"]')).to_have_count(1)
    expect(page.locator("#flower-link")).to_have_attribute("href", re.compile(r"^http://"))

    digits, fashion = card(page, "digits"), card(page, "fashion")
    expect(digits.locator(".model-title .badge")).to_have_text("production v1")
    expect(fashion.locator(".model-title .badge")).to_have_text("production v1")
    row = digits.locator('tr[data-version="1"]')
    expect(row).to_have_class(re.compile(r"\bis-production\b"))
    expect(row.locator(".aliases .badge")).to_have_text("production")
    shipped = json.loads((shipped_models_dir() / "digits" / "1" / "model.json").read_text(encoding="utf-8"))
    expect(row).to_contain_text(f"{100 * shipped['metrics']['heldout_accuracy']:.1f}%")  # 99.3%
    expect(fashion.locator('tr[data-version="1"]')).to_contain_text("90.8%")
    expect(digits).to_contain_text("digits-mnist")
    expect(fashion).to_contain_text("fashion-mnist")
    # Read-only without a token: no promote or rollback buttons.
    expect(page.locator(".admin-action")).to_have_count(0)
    screenshot(page, "web-models")
    assert pages.problems == []


def register_versions(stack: Stack, tmp_path: Path) -> None:
    """digits v2, a good copy of v1, and v3, whose stored weights are damaged after registration."""
    store = store_of(stack)
    assert store.register_dir("digits", copy_of("digits", tmp_path / "v2", "web page")) == "2"
    assert store.register_dir("digits", copy_of("digits", tmp_path / "v3", "to be corrupted")) == "3"
    source = str(store.client.get_model_version("digits", "3").source)
    weights = Path(store.location(source).removeprefix("file://")) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-512] + bytes(512))
    sync_view(stack, "digits")


def test_admin_promotes_and_rolls_back_from_the_page(pages: Pages, stack: Stack, tmp_path: Path) -> None:
    register_versions(stack, tmp_path)
    page = pages.open("/models", viewport=DESKTOP)
    digits = card(page, "digits")
    expect(digits.locator("tbody tr")).to_have_count(3)
    title, message = page.locator("#action-title"), page.locator("#action-message")

    # A wrong token: the gateway's 403 is shown, and nothing moves.
    use_token(page, "not-the-admin-token")
    page.get_by_role("button", name="Promote digits v2 to production").click()
    expect(page.locator("#action-result")).to_have_class(re.compile(r"\berror\b"))
    expect(title).to_have_text("403 forbidden")
    expect(message).to_have_text("the admin token is not valid")
    assert production(stack, "digits") == "1"

    # The right token, but a version whose files fail their check: 409, production stays.
    use_token(page, ADMIN_TOKEN)
    assert page.evaluate("sessionStorage.getItem('digitflow-admin-token')") == ADMIN_TOKEN
    page.get_by_role("button", name="Promote digits v3 to production").click()
    expect(title).to_have_text("409 model_version_invalid", timeout=DEPLOY_TIMEOUT_MS)
    expect(message).not_to_be_empty()
    assert production(stack, "digits") == "1"
    screenshot(page, "web-models-409")

    # A good version: promoted on every inference process, and the page shows the new state.
    page.get_by_role("button", name="Promote digits v2 to production").click()
    expect(title).to_have_text("Promoted: digits v2 is in production", timeout=DEPLOY_TIMEOUT_MS)
    expect(page.locator("#action-result")).to_have_class(re.compile(r"\bsuccess\b"))
    expect(message).to_contain_text("It was v1. 1 inference process switched")
    expect(digits.locator(".model-title .badge")).to_have_text("production v2")
    expect(digits.locator('tr[data-version="2"]')).to_have_class(re.compile(r"\bis-production\b"))
    expect(digits.locator('tr[data-version="2"] .aliases')).to_have_text("production")
    expect(digits.locator(".model-notes")).to_contain_text("v1 → v2")
    assert production(stack, "digits") == "2"
    screenshot(page, "web-models-promoted")

    rollback = page.get_by_role("button", name="Roll back digits to the previous production version")
    expect(rollback).to_have_text("Roll back to v1")
    rollback.click()
    expect(title).to_have_text("Rolled back: digits v1 is in production", timeout=DEPLOY_TIMEOUT_MS)
    expect(digits.locator(".model-title .badge")).to_have_text("production v1")
    expect(rollback).to_be_disabled()  # nothing earlier to go back to
    assert production(stack, "digits") == "1"
    assert pages.problems == []


def test_models_on_a_phone_sized_screen(pages: Pages) -> None:
    page = pages.open("/models", viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    use_token(page, ADMIN_TOKEN)
    expect(card(page, "digits").locator(".admin-action").first).to_be_visible()
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"horizontal scrolling on a phone: content {widths[0]} px, screen {widths[1]} px"
    screenshot(page, "web-models-phone")
    assert pages.problems == []
