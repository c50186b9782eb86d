"""The test page (`static/index.html`) in headless Chromium, driven by Playwright, against the
real service under gunicorn (offline simulator) with a client key required, and under the
security headers' Content-Security-Policy, added to the page response by the test itself."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import CLIENT_KEY
from tests.servers import ROOT

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own outbound connections are refused in the sandbox.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
ARTIFACTS = ROOT / "test-artifacts"
OFFLINE = "[offline simulator]"
RATE_LIMITED = "sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=7"
# Records CSP violations from the first script on, before any of the page's own.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (event) => window.__cspViolations.push(event.violatedDirective + ' ' + event.blockedURI));
"""


def require(condition: bool, what: str) -> None:
    """Skips without `what`, but fails under CI, where the browser tests must run."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required under CI")
        pytest.skip(f"{what} is not available")


@pytest.fixture(scope="module")
def browser():
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
        assert self.page.evaluate("window.__cspViolations") == []
        assert self.exceptions == []
        unexpected = [text for text in self.console_errors
                      if not any(text.startswith("Failed to load resource") and code in text for code in expected_failed_loads)]
        assert unexpected == []


def open_page(browser, url: str, **context_options):
    """A fresh page at `url`, its document served with the CSP, its problems recorded."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.add_init_script(RECORD_VIOLATIONS)

    def with_csp(route):
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})

    page.route(lambda address: urlparse(address).path == "/", with_csp)
    problems = PageProblems(page)
    response = page.goto(url + "/")
    assert response.headers["content-security-policy"] == CSP
    return page, problems


def last_reply(page):
    return page.locator(".message.assistant").last


def test_streams_stops_and_keeps_context_on_a_phone_in_chinese(browser, keyed_service):
    page, problems = open_page(browser, keyed_service.url, locale="zh-CN", viewport={"width": 390, "height": 844},
                               device_scale_factor=2, is_mobile=True, has_touch=True)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("h1")).to_have_text("Kimi API 测试页")
    expect(page.locator("#upstream")).to_have_text("离线模拟器")
    # The model list needs the key this service requires: the page says so until it has one.
    expect(page.locator("#notice")).to_contain_text("此服务器需要 API 密钥")
    page.fill("#api-key", CLIENT_KEY)
    page.press("#api-key", "Tab")
    expect(page.locator("#model option[value='kimi-k3']")).to_have_count(1)
    expect(page.locator("#notice")).to_be_hidden()
    page.select_option("#model", "kimi-k2.7-code-highspeed")

    # Streaming (the default mode): the reply appears piece by piece, then its usage.
    send = page.locator("#send")
    expect(send).to_have_text("发送")
    page.fill("#message", "写一个故事 sim:chunks=30 sim:interval=0.05")
    with page.expect_request("**/api/chat/stream") as stream_request:
        send.click()
    assert stream_request.value.post_data_json["model"] == "kimi-k2.7-code-highspeed"
    expect(send).to_have_text("发送中…")
    expect(send).to_be_disabled()
    expect(last_reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: 写一个故事")
    expect(last_reply(page).locator(".note")).to_have_text(re.compile(r"^用量：提示 \d+ \+ 回复 \d+ = \d+ tokens$"))
    expect(send).to_have_text("发送")

    # A long stream shows its text as it arrives; Stop ends it part way.
    page.fill("#message", "一个很长的故事 sim:reply=从前有一座山 sim:repeat=40 sim:chunks=100 sim:interval=0.1")
    send.click()
    expect(last_reply(page).locator(".text")).to_contain_text("从前有一座山")
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(last_reply(page).locator(".note")).to_have_text("已停止。")
    expect(send).to_be_enabled()
    assert len(last_reply(page).locator(".text").text_content()) < len("从前有一座山 ") * 40

    # Multi-turn sends the completed turns as context; the stopped reply is not one of them.
    page.get_by_label("多轮对话").check()
    page.fill("#message", "第三句")
    with page.expect_request("**/api/chat/history") as history_request:
        send.click()
    sent = history_request.value.post_data_json["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "写一个故事 sim:chunks=30 sim:interval=0.05"), ("assistant", f"{OFFLINE} You said: 写一个故事"),
        ("user", "第三句")]
    expect(last_reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: 第三句")

    # An upstream 429 says when to try again.
    page.get_by_label("单轮对话").check()
    page.fill("#message", f"hi {RATE_LIMITED}")
    send.click()
    expect(page.locator("#notice")).to_have_text("请求过于频繁，请在 7 秒后重试。")

    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways on a phone"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "test-page-phone-zh.png")
    problems.assert_none("401", "429")

    # The CSP really is enforced on this page: an inline style is refused and recorded.
    page.evaluate("document.body.setAttribute('style', 'color: red')")
    page.wait_for_function("window.__cspViolations.length > 0")
    page.context.close()


def test_explains_key_and_network_errors_in_english(browser, keyed_service):
    page, problems = open_page(browser, keyed_service.url, locale="en-US", viewport={"width": 1280, "height": 800})
    expect(page.locator("#send")).to_have_text("Send")
    page.get_by_label("Single turn").check()
    notice = page.locator("#notice")

    page.fill("#message", "hello")
    page.press("#message", "Control+Enter")
    expect(notice).to_have_text("This server requires an API key. Enter it in the “API key” field and send again.")
    expect(page.locator(".message.user")).to_have_text(["You" + "hello"])
    expect(page.locator(".message.assistant")).to_have_count(0)

    page.fill("#api-key", "not-the-key")
    page.fill("#message", "hello")
    page.click("#send")
    expect(notice).to_have_text("The server rejected this API key. Check the “API key” field.")

    page.route("**/api/chat/completion", lambda route: route.abort("connectionrefused"))
    page.fill("#api-key", CLIENT_KEY)
    page.fill("#message", "hello")
    page.click("#send")
    expect(notice).to_have_text("Cannot reach the server. Check that it is running and that you are online.")

    page.unroute("**/api/chat/completion")
    page.fill("#message", "hello again")
    page.click("#send")
    expect(last_reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: hello again")
    expect(notice).to_be_hidden()
    problems.assert_none("401", "ERR_CONNECTION_REFUSED")
    page.context.close()
