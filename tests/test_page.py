"""The test page (`static/index.html`) in headless Chromium, driven by Playwright, against the
real service under gunicorn (offline simulator) with a client key required, served with the
service's own Content-Security-Policy."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser import open_page
from tests.conftest import CLIENT_KEY
from tests.helpers import ROOT

ARTIFACTS = ROOT / "test-artifacts"
OFFLINE = "[offline simulator]"
RATE_LIMITED = "sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=7"


def last_reply(page):
    return page.locator(".message.assistant").last


def assert_controls_named(page, model: str, key: str, message: str, conversation: str, recent: str) -> None:
    """Each control and landmark has the name its label gives it in the page's language: what a
    screen reader says, and what a speech user says to reach it."""
    expect(page.get_by_role("combobox", name=model, exact=True)).to_have_id("model")
    expect(page.get_by_label(key, exact=True)).to_have_id("api-key")
    expect(page.get_by_role("textbox", name=message, exact=True)).to_have_id("message")
    expect(page.get_by_role("region", name=conversation, exact=True)).to_have_id("conversation")
    expect(page.get_by_role("navigation", name=recent, exact=True)).to_be_visible()


def test_streams_stops_and_keeps_context_on_a_phone_in_chinese(browser, keyed_service):
    page, problems = open_page(browser, keyed_service.url, locale="zh-CN", viewport={"width": 390, "height": 844},
                               device_scale_factor=2, is_mobile=True, has_touch=True)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("h1")).to_have_text("Kimi API 测试页")
    expect(page.locator("#upstream")).to_have_text("离线模拟器")
    assert_controls_named(page, "模型", "API 密钥（服务器要求时填写）", "消息", "对话", "最近的对话")
    # The model list needs the key this service requires: the page says so until it has one.
    expect(page.locator("#notice")).to_contain_text("此服务器需要 API 密钥")
    page.fill("#api-key", CLIENT_KEY)
    page.press("#api-key", "Tab")
    expect(page.locator("#notice")).to_be_hidden()
    # Whatever models the service lists (their ids change upstream): pick the second.
    options = page.locator("#model option")
    expect(options.nth(2)).to_be_attached()
    chosen = options.nth(2).get_attribute("value")
    page.select_option("#model", chosen)

    # Streaming (the default mode): the reply appears piece by piece, then its usage.
    send = page.locator("#send")
    expect(send).to_have_text("发送")
    page.fill("#message", "写一个故事 sim:chunks=30 sim:interval=0.05")
    with page.expect_request("**/api/chat/stream") as stream_request:
        send.click()
    assert stream_request.value.post_data_json["model"] == chosen
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
    assert_controls_named(page, "Model", "API key (if the server requires one)", "Message", "Conversation", "Recent conversations")
    page.get_by_label("Single turn").check()
    notice = page.locator("#notice")

    page.fill("#message", "hello")
    page.press("#message", "Control+Enter")
    expect(notice).to_have_text("This server requires an API key. Enter it in the “API key” field and send again.")
    # Nothing was sent: the turn is undone, its text back in the box, and the key field is where to go.
    expect(page.locator("#message")).to_have_value("hello")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#api-key")).to_be_focused()
    expect(page.locator("#api-key")).to_have_attribute("aria-invalid", "true")

    page.fill("#api-key", "not-the-key")
    page.fill("#message", "hello")
    page.click("#send")
    expect(notice).to_have_text("The server rejected this API key. Check the “API key” field.")

    page.route("**/api/chat/completion", lambda route: route.abort("connectionrefused"))
    # Leaving the key field reloads the model list; held here until the send has failed, so
    # its success lands after the send's notice, as it did on a slow machine.
    held_models = []
    page.route("**/api/chat/models", lambda route: held_models.append(route))
    page.fill("#api-key", CLIENT_KEY)
    page.fill("#message", "hello")
    page.click("#send")
    network = "Cannot reach the server. Check that it is running and that you are online."
    expect(notice).to_have_text(network)
    assert len(held_models) == 1
    page.unroute("**/api/chat/models")
    held_models[0].continue_()
    expect(page.locator("#model option")).not_to_have_count(1)  # the list is in
    # The list's success takes back only its own failure (the missing key), not this notice.
    expect(notice).to_have_text(network)

    page.unroute("**/api/chat/completion")
    page.fill("#message", "hello again")
    page.click("#send")
    expect(last_reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: hello again")
    expect(notice).to_be_hidden()
    problems.assert_none("401", "ERR_CONNECTION_REFUSED")
    page.context.close()


def test_every_label_the_page_uses_is_in_both_languages():
    """A label missing from one language throws where the page uses it (the Chinese page would
    break only on the path that needs it), and one with other placeholders shows them raw."""
    source = (ROOT / "static" / "i18n.js").read_text()
    english, chinese = ({key: set(re.findall(r"\{(\w+)\}", text)) for key, text in re.findall(r"^    (\w+): '(.*)',$", block, re.M)}
                        for block in source.split("\n  zh: {"))
    assert len(english) > 40
    assert english == chinese, {key for key in english.keys() | chinese.keys() if english.get(key) != chinese.get(key)}
    page = (ROOT / "static" / "index.html").read_text()
    used = set(re.findall(r'data-i18n(?:-placeholder|-aria-label)?="(\w+)"', page))
    for script in (ROOT / "static").glob("*.js"):
        for call in re.findall(r"\b(?:t|around)\(([^{)]*)", script.read_text()):
            # The label, or each label a condition picks (`t(busy ? 'sending' : 'send')`).
            used.update(re.findall(r"(?:^|[?:])\s*'(\w+)'", call.split(",")[0]))
    assert len(used) > 30 and used <= set(english), used - set(english)
