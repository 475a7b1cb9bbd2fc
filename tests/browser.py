"""A real browser for the console's tests: Debian's chromium, headless, driven by Playwright.

Loaded by tests/conftest.py (``pytest_plugins``). One chromium per test module (it costs
a second to start); each test gets a fresh page with its own cookies. Every page a test
visits is saved as a full-page screenshot in ``test-output/<test name>/NN-<page>.png``,
and when a test fails, the page as it was at that moment too, so a failure can be looked
at rather than guessed at.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, Response, sync_playwright

from tests.support import OPERATOR_PASSWORD, REPO

OUTPUT = REPO / "test-output"
# `make browser` installs it; TOPUP_TEST_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("TOPUP_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}


def launch(playwright: Playwright) -> Browser:
    """Headless chromium, or a failure that says why: the browser tests are never skipped."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no chromium at {CHROMIUM}: run `make browser` (apt-get install chromium "
            "fonts-noto-cjk); the console's browser tests need it",
            pytrace=False,
        )
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True)


class Screen:
    """A page, with a screenshot of each page it lands on."""

    def __init__(self, page: Page, base_url: str, folder: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.folder = folder
        self.shots: list[Path] = []
        # Forms that move money or routes ask "are you sure?": the operator says yes.
        self.dialogs: list[str] = []
        page.on("dialog", self._accept)

    def _accept(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def goto(self, path: str, timeout_ms: float | None = None) -> Response | None:
        """Open a page and record it; ``timeout_ms`` for a page heavier than the default
        allows (the context's 10 s)."""
        response = self.page.goto(self.base_url + path, timeout=timeout_ms)
        self.snap(timeout_ms=timeout_ms)
        return response

    def click(self, target: Locator) -> Response | None:
        """Click something that loads a page (a link, a submit button), then record it;
        the answer to the page's request (after redirects)."""
        return self.navigate(target.click)

    def menu(self, entry: str) -> Response | None:
        """Open a page from the navigation bar at the top."""
        return self.click(
            self.page.locator("header nav").get_by_role("link", name=entry, exact=True)
        )

    def navigate(self, action: Callable[[], object]) -> Response | None:
        """Do something that loads a page, then record it; the answer to its request."""
        with self.page.expect_navigation() as navigation:
            action()
        self.snap()
        return navigation.value

    def snap(self, step: str | None = None, timeout_ms: float | None = None) -> Path:
        """A full-page screenshot, named after ``step`` or the page's path."""
        self.page.wait_for_load_state(timeout=timeout_ms)
        name = step or _slug(self.page.url.removeprefix(self.base_url)) or "root"
        path = self.folder / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=path, full_page=True)
        self.shots.append(path)
        return path

    def sign_in(self, name: str, password: str = OPERATOR_PASSWORD) -> Page:
        """The sign-in form, filled and sent as a person would; the page signed in."""
        self.goto("/console/login")
        self.page.get_by_label("用户名").fill(name)
        self.page.get_by_label("密码").fill(password)
        self.click(self.page.get_by_role("button", name="登录"))
        assert "/console/login" not in self.page.url, f"{name} could not sign in"
        return self.page


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", path.split("?", 1)[0]).strip("-")[:60]


# Module scope, not session: while Playwright's sync API is started, the thread's running
# event loop is its own, so asyncio.run() and the async tests of later modules on the same
# worker would fail. The browser tests are one module, so chromium still starts once.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def screen_for(chromium: Browser, request: pytest.FixtureRequest) -> Iterator:
    """``screen_for(service)``: a fresh browser page (no cookies) on that service."""
    folder = OUTPUT / re.sub(r"[^\w.-]+", "-", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    opened: list[Screen] = []

    def open_screen(service) -> Screen:
        context = chromium.new_context(viewport=VIEWPORT, locale="zh-CN")
        # A missing element fails in seconds: these pages answer in milliseconds.
        context.set_default_timeout(10_000)
        screen = Screen(context.new_page(), service.url, folder)
        opened.append(screen)
        return screen

    yield open_screen
    failed = request.node.stash.get(CALL_FAILED, False)
    for screen in opened:
        if failed and not screen.page.is_closed():
            screen.snap("failed")
        screen.page.context.close()


CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report
