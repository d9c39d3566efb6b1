"""The web page at ``/`` in a real browser against a real stack (gateway + three real workers).

The fixtures here (``stack``, ``browser``, ``pages``) serve the other page tests too
(``test_web_models.py``, ``test_web_monitoring.py``), on one stack.

Debian's Chromium, driven headless by Playwright: never ``playwright install``, which downloads
browsers. Screenshots land in ``tests/artifacts/`` for a human to look at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer
from tests.integration.models_support import ADMIN_TOKEN, wait_for_registry
from tests.integration.test_pipeline import blank_page, heldout_digits, paper_photo
from tests.stacks import Stack, start_stack

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect  # noqa: E402

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLOWER_URL = "http://flower.example.test:5555"
# Quiet, sandbox-free flags: the test machine has no GPU, no display and no internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ANSWER_TIMEOUT_MS = 20_000  # the first job also waits for the model to load in its worker


WEB_STACK = pytest.StashKey[Stack]()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """Gateway, workers and the registry service with the shipped models registered, ADMIN_TOKEN set.

    One stack for every web-page module (``test_web*.py`` use this fixture): it takes 10-40 s to
    start on a busy 2-core machine, so the first module starts it and it is closed when the tests
    of this package (``tests/e2e``) are done.
    """
    owner: pytest.Package | pytest.Session = request.node.getparent(pytest.Package) or request.session
    if WEB_STACK not in owner.stash:
        url = redis_server.url(5)
        client = redis.Redis.from_url(url)
        client.flushdb()
        env = {"FLOWER_URL": FLOWER_URL, "ADMIN_TOKEN": ADMIN_TOKEN}
        started = start_stack(url, tmp_path_factory.mktemp("web-stack"), env=env)

        def close() -> None:
            started.close()
            client.flushdb()
            client.close()

        owner.addfinalizer(close)
        wait_for_registry(started, ("digits", "fashion"), servers=1)
        owner.stash[WEB_STACK] = started
    return owner.stash[WEB_STACK]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make system-deps` (as root) installs Debian's chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Pages:
    """Opens fresh pages on the stack and closes their contexts after the test.

    ``problems`` collects page errors and any request that would leave this machine.
    """

    def __init__(self, browser: Browser, stack: Stack) -> None:
        self.browser = browser
        self.stack = stack
        self.contexts: list[BrowserContext] = []
        self.problems: list[str] = []

    def open(
        self, path: str = "/", routes: Mapping[str, Callable[[Route], None]] | None = None, **context_options: Any
    ) -> Page:
        """A new page at ``path``; ``routes`` (URL glob -> handler) answer requests instead of the stack."""
        context = self.browser.new_context(**context_options)
        self.contexts.append(context)
        context.route("**/*", self._only_local)
        page = context.new_page()
        for url, handler in (routes or {}).items():
            page.route(url, handler)  # page routes win over the context's
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.goto(self.stack.base_url + path)
        return page

    def _only_local(self, route: Route) -> None:
        # The page must work offline: everything it loads comes from the gateway itself.
        url = route.request.url
        if url.startswith((self.stack.base_url, "blob:", "data:")):
            route.continue_()
        else:
            self.problems.append(f"external request: {url}")
            route.abort()

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser, stack: Stack) -> Iterator[Pages]:
    pages = Pages(browser, stack)
    yield pages
    pages.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def draw(page: Page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw with the mouse on the pad; points are fractions of its width and height."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
        page.mouse.up()


@pytest.mark.parametrize("path", ["/", "/models", "/monitoring"])
def test_every_page_has_the_header_and_a_strict_content_policy(stack: Stack, path: str) -> None:
    response = stack.session.get(stack.base_url + path, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    for link in ('href="/"', 'href="/models"', 'href="/monitoring"', 'href="/metrics"', f'href="{FLOWER_URL}"'):
        assert link in response.text, (path, link)
    assert response.text.count('aria-current="page"') == 1


def test_a_drawn_digit_is_recognised_with_probabilities_and_timeline(pages: Pages, stack: Stack) -> None:
    page = pages.open(viewport={"width": 1280, "height": 900})
    expect(page.locator("#flower-link")).to_have_attribute("href", FLOWER_URL + "/")
    expect(page.locator("#metrics-link")).to_have_attribute("href", "/metrics")
    expect(page.locator("#submit-drawing")).to_be_disabled()

    draw(page, [[(0.5, 0.18), (0.5, 0.82)]])  # a "1": one vertical stroke
    page.get_by_role("button", name="Recognise drawing").click()
    expect(page.locator("#label")).to_have_text("1", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("it is a 1")
    expect(page.locator("#probs li")).to_have_count(10)
    expect(page.locator("#probs li.top .digit")).to_have_text("1")
    expect(page.locator("#stages li.done")).to_have_count(5)
    # Every stage that ran has a timeline segment and a row with its queue wait and run time.
    for stage in ("preprocess", "inference", "postprocess"):
        expect(page.locator(f"#timeline .segment.{stage}.run")).to_have_count(1)
        expect(page.locator("#timings tbody th", has_text=stage.capitalize())).to_have_count(1)
    expect(page.locator("#model")).to_have_text(re.compile(r"^digits v\w+"))
    screenshot(page, "web-drawn-1")

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#submit-drawing")).to_be_disabled()
    draw(page, [[(0.25, 0.2), (0.75, 0.2)], [(0.75, 0.2), (0.45, 0.85)]])  # a "7": bar, then diagonal
    page.get_by_role("button", name="Recognise drawing").click()
    expect(page.locator("#label")).to_have_text("7", timeout=ANSWER_TIMEOUT_MS)
    assert pages.problems == []


def test_an_uploaded_photo_is_recognised_and_feedback_is_sent(pages: Pages, tmp_path: Path) -> None:
    digit, label = heldout_digits(1, seed=7)[0]
    photo = tmp_path / "digit.jpg"
    photo.write_bytes(paper_photo(digit))
    page = pages.open(viewport={"width": 1280, "height": 900})

    page.locator("#file").set_input_files(str(photo))
    expect(page.locator("#label")).to_have_text(str(label), timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#preview")).to_be_visible()
    job_id = page.locator("#job-id").inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id), job_id

    wrong = (label + 1) % 10
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(f"/v1/jobs/{job_id}/feedback")) as sent:
        page.get_by_role("button", name=f"It was a {wrong}", exact=True).click()
    assert sent.value.post_data_json == {"label": wrong}
    # Whatever the gateway answers (the endpoint may not exist yet), the page says so and keeps working.
    expect(page.locator("#feedback-status")).to_have_text(re.compile(r"not available yet|Thanks|not recorded"))
    expect(page.locator("#label")).to_have_text(str(label))
    screenshot(page, "web-upload")
    assert pages.problems == []


def test_failures_show_stage_code_and_message(pages: Pages, stack: Stack, tmp_path: Path) -> None:
    page = pages.open(viewport={"width": 1280, "height": 900})
    blank = tmp_path / "blank.jpg"
    blank.write_bytes(blank_page())
    page.locator("#file").set_input_files(str(blank))
    expect(page.locator("#error-title")).to_have_text("Failed in preprocess: no_ink", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#error-message")).not_to_be_empty()
    expect(page.locator("#stages li.failed")).to_have_count(2)  # the stage that failed, and the end
    expect(page.locator("#result")).to_be_hidden()
    screenshot(page, "web-failed-job")

    # Refused by the gateway itself (400): the error body's message is shown.
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is not a picture at all")
    page.locator("#file").set_input_files(str(not_an_image))
    expect(page.locator("#error-title")).to_contain_text("400 invalid_image", timeout=ANSWER_TIMEOUT_MS)
    message = stack.submit(not_an_image.read_bytes(), "image/png").json()["error"]["message"]
    expect(page.locator("#error-message")).to_have_text(message)
    assert pages.problems == []


def draw_by_touch(page: Page, points: list[tuple[float, float]]) -> None:
    """One finger stroke on the pad, sent as real touch input through the DevTools protocol."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    cdp = page.context.new_cdp_session(page)
    at = [{"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]} for x, y in points]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [at[0]]})
    for point in at[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_phone_sized_screen(pages: Pages, stack: Stack) -> None:
    page = pages.open(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    assert page.locator("#pad").evaluate("el => getComputedStyle(el).touchAction") == "none"
    draw_by_touch(page, [(0.5, 0.2 + i * 0.03) for i in range(21)])  # a "1" drawn with a finger
    page.get_by_role("button", name="Recognise drawing").click()
    expect(page.locator("#label")).to_have_text("1", timeout=ANSWER_TIMEOUT_MS)
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"horizontal scrolling on a phone: content {widths[0]} px, screen {widths[1]} px"
    screenshot(page, "web-phone")
    assert pages.problems == []
