"""Headless Chromium (the system's, driven by Playwright) for the page and example tests:
the browser fixture, pages opened under the service's Content-Security-Policy, and the
record of each page's console errors, exceptions and CSP violations."""
from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from kimi_backend.extensions import CONTENT_SECURITY_POLICY
from tests.helpers import require

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own outbound connections are refused in the sandbox.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Records CSP violations from the first script on, before any of the page's own.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (event) => window.__cspViolations.push(event.violatedDirective + ' ' + event.blockedURI));
"""


@pytest.fixture(scope="module")
def browser():
    """The system's Chromium, headless, for one test module."""
    require(Path(CHROMIUM).exists(), CHROMIUM)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageProblems:
    """Console errors, uncaught exceptions and CSP violations of one page."""

    def __init__(self, page):
        self.page = page
        self.console_errors: list[str] = []
        self.exceptions: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.console_errors.append(message.text))
        page.on("pageerror", lambda error: self.exceptions.append(str(error)))

    def assert_none(self, *expected_failed_loads: str) -> None:
        """No CSP violation, no exception, and no console error but Chromium's own "Failed to load
        resource" line for each HTTP failure the test provoked on purpose (e.g. "401")."""
        assert self.page.evaluate("window.__cspViolations") == [], self.page.evaluate("window.__cspViolations")
        assert self.exceptions == [], self.exceptions
        unexpected = [text for text in self.console_errors
                      if not any(text.startswith("Failed to load resource") and code in text for code in expected_failed_loads)]
        assert unexpected == [], unexpected


def open_page(browser, url: str, *, before_load=None, **context_options):
    """A fresh page at `url` + "/", its problems recorded; the service must have served it with
    its Content-Security-Policy. `before_load(page)` runs before navigation (to install a clock, say)."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    problems = PageProblems(page)
    if before_load:
        before_load(page)
    response = page.goto(url + "/")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    return page, problems
