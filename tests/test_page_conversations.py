"""The test page's conversations and controls, in headless Chromium under the service's CSP:
conversations kept across a reload, the Retry-After countdown (on Playwright's clock), use by
keyboard alone, the thinking switch, and anonymous session tokens."""
from __future__ import annotations

import json
import re

from playwright.sync_api import expect

from tests.browser import open_page
from tests.conftest import CLIENT_KEY
from tests.helpers import json_lines, wait_until
from tests.servers import Service
from tests.token_support import claims_of, token_config

OFFLINE = "[offline simulator]"
RATE_LIMITED = "sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=7"
# What has the focus: its id, a radio button's name:value, or the id of what it is in.
FOCUSED = """(() => {
  const element = document.activeElement;
  return element.id || (element.type === 'radio' ? `${element.name}:${element.value}` : element.closest('[id]').id);
})()"""


def reply(page):
    return page.locator(".message.assistant").last


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def test_conversations_survive_a_reload_and_come_back_from_the_recent_list(browser, keyed_service):
    page, problems = open_page(browser, keyed_service.url, locale="en-US")
    page.fill("#api-key", CLIENT_KEY)
    page.press("#api-key", "Tab")
    send(page, "first question sim:reasoning=2")
    expect(reply(page).locator(".note")).to_contain_text("Tokens:")
    send(page, "second question")
    expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: second question")
    totals = page.locator("#totals")
    expect(totals).to_have_text(re.compile(r"^This conversation: \d+ tokens \(\d+ prompt \+ \d+ reply\)$"))
    before = totals.text_content()

    # After a reload: the same conversation, reasoning included, its totals, and the key (in this tab).
    page.reload()
    expect(page.locator(".message")).to_have_count(4)
    expect(page.locator(".message.assistant").first.locator(".reasoning-text")).to_contain_text("Thinking step 2")
    expect(totals).to_have_text(before)
    expect(page.locator("#api-key")).to_have_value(CLIENT_KEY)
    with page.expect_request("**/api/chat/stream") as request:
        send(page, "third question")
    sent = request.value.post_data_json["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[1]["reasoning"].startswith("Thinking step 1")
    expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: third question")

    # New conversation: an empty page; the old one waits in the recent list.
    page.click("#clear")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    expect(totals).to_be_hidden()
    send(page, "another topic")
    expect(reply(page).locator(".note")).to_contain_text("Tokens:")
    page.locator("#recent-box summary").click()
    entries = page.locator("#recent-list .open")
    expect(entries).to_have_text(["another topic", "first question sim:reasoning=2"])
    expect(entries.first).to_have_attribute("aria-current", "true")
    entries.nth(1).click()
    expect(page.locator(".message.user")).to_have_count(3)
    expect(page.locator(".message.user").first).to_contain_text("first question")

    # Deleting the one on screen leaves a new, empty conversation.
    page.get_by_role("button", name="Delete “first question sim:reasoning=2”").click()
    expect(entries).to_have_text(["another topic"])
    expect(page.locator(".message")).to_have_count(0)
    stored = json.loads(page.evaluate("localStorage.getItem('kimi-test-page.conversations')"))
    assert [record["title"] for record in stored] == ["another topic"]
    problems.assert_none("401")  # the model list, asked for before the key was typed
    page.context.close()


def test_a_rate_limit_counts_down_from_retry_after(browser, keyed_service):
    page, problems = open_page(browser, keyed_service.url, locale="en-US", before_load=lambda page: page.clock.install())
    page.fill("#api-key", CLIENT_KEY)
    send(page, f"hi {RATE_LIMITED}")
    notice = page.locator("#notice")
    expect(notice).to_have_text("Too many requests. Try again in 7 s.")
    expect(notice.locator("[aria-live=off]")).to_have_text("7")  # the ticking number is not read out each second
    expect(page.locator("#message")).to_have_value(f"hi {RATE_LIMITED}")

    page.clock.fast_forward(3000)
    expect(notice).to_have_text("Too many requests. Try again in 4 s.")
    page.clock.fast_forward(4500)
    expect(notice).to_have_text("You can send again.")
    problems.assert_none("401", "429")
    page.context.close()


def test_everything_works_from_the_keyboard(browser, scripted_service, simulator):
    page, problems = open_page(browser, scripted_service.url, locale="en-US")
    # Tab goes through the controls in reading order (the radio group is one stop, disabled Stop
    # none, the thinking switch one where the default model's thinking is optional).
    expect(page.locator("#model option").nth(1)).to_be_attached()
    expected = ["model", "api-key", *(["thinking"] if page.locator("#thinking").is_visible() else []),
                "mode:stream", "recent-box", "message", "send", "clear"]
    focus_order = []
    page.locator("body").focus()
    for _ in expected:
        page.keyboard.press("Tab")
        focus_order.append(page.evaluate(FOCUSED))
    assert focus_order == expected

    # Back to the message box; type and send with Ctrl+Enter; stop a long reply with Escape;
    # Retry is one Shift+Tab back.
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#message")).to_be_focused()
    page.keyboard.type("a long story sim:chunks=60 sim:interval=0.1")
    page.keyboard.press("Control+Enter")
    expect(reply(page).locator(".text")).to_contain_text("offline")
    expect(page.locator("#message")).to_be_focused()
    page.keyboard.press("Escape")
    expect(reply(page).locator(".note")).to_have_text("Stopped.")
    expect(page.locator("#announcer")).to_have_text("Stopped.")
    expect(page.locator("#message")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(reply(page).get_by_role("button", name="Retry")).to_be_focused()
    simulator.script([{"chunks": 3}])
    page.keyboard.press("Enter")
    expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: a long story")
    expect(page.locator("#announcer")).to_have_text(f"Kimi replied: {OFFLINE} You said: a long story")
    expect(page.locator(".message")).to_have_count(2)
    problems.assert_none()
    page.context.close()


def with_thinking_modes(route):
    """The service's real /api/chat/models; when it does not say yet how each model thinks (the
    simulator on this branch predates today's models), the first is made optional, the second always."""
    response = route.fetch()
    body = response.json()
    if not any("thinking" in model for model in body["data"]):
        body["data"][0]["thinking"] = "optional"
        body["data"][1]["thinking"] = "always"
    route.fulfill(response=response, json=body)


def test_the_thinking_switch_shows_for_models_that_let_it_be_turned_off(browser, scripted_service, simulator):
    page, problems = open_page(browser, scripted_service.url, locale="zh-CN",
                               before_load=lambda page: page.route("**/api/chat/models", with_thinking_modes))
    expect(page.locator("#model option").nth(2)).to_be_attached()
    models = page.evaluate("fetch('/api/chat/models').then((response) => response.json())")["data"]
    optional = next(model["id"] for model in models if model.get("thinking") == "optional")
    always = next(model["id"] for model in models if model.get("thinking") == "always")
    switch = page.get_by_role("switch", name="深度思考")

    page.select_option("#model", optional)
    expect(switch).to_be_visible()
    expect(switch).to_be_checked()
    switch.uncheck()
    with page.expect_request("**/api/chat/stream") as request:
        send(page, "不用思考")
    assert request.value.post_data_json["thinking"] is False
    assert request.value.post_data_json["model"] == optional
    expect(reply(page).locator(".note")).to_contain_text("用量")

    page.select_option("#model", always)
    expect(switch).to_be_hidden()
    with page.expect_request("**/api/chat/stream") as request:
        send(page, "想一想")
    assert "thinking" not in request.value.post_data_json

    # The choices are remembered.
    page.reload()
    expect(page.locator("#model")).to_have_value(always)
    page.select_option("#model", optional)
    expect(switch).not_to_be_checked()
    problems.assert_none()
    page.context.close()


def stream_lines(service) -> list[dict]:
    """The service's access-log lines for POST /api/chat/stream."""
    lines = json_lines(service.log())
    return [line for line in lines if line.get("logger") == "kimi_backend.access" and line.get("route") == "/api/chat/stream"]


def test_the_page_runs_on_an_anonymous_session_token_when_the_service_offers_one(browser):
    """A service with ANONYMOUS_TOKENS=true that requires a client key: the page, served by the
    service itself, starts one real session (POST /api/session, no credentials) and chats on its
    signed token, which the service verifies (only a valid key or token gets through)."""
    service = Service(REQUIRE_API_KEY="true", VALID_API_KEYS=CLIENT_KEY, **token_config(ANONYMOUS_TOKENS="true"))
    sessions = []

    def count_sessions(page):
        page.on("request", lambda request: sessions.append(request.headers.get("authorization"))
                if request.url.endswith("/api/session") else None)

    try:
        page, problems = open_page(browser, service.url, locale="en-US", before_load=count_sessions)
        expect(page.locator("#session-note")).to_be_visible()
        for text in ("one", "two"):
            with page.expect_request("**/api/chat/stream") as request:
                send(page, text)
            expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: {text}")
            scheme, _, token = request.value.headers["authorization"].partition(" ")
            assert scheme == "Bearer" and claims_of(token)["sub"].startswith("anon:")
            assert claims_of(token)["origins"] == [service.url]  # bound to the page that asked
        assert sessions == [None], "one session, asked for without credentials"
        streams = wait_until(lambda: len(lines := stream_lines(service)) == 2 and lines, timeout=10,
                             message="both streams in the access log")
        assert [(line["status"], line["client"].startswith("sub:anon:")) for line in streams] == [(200, True)] * 2

        # A key typed in is used instead.
        page.fill("#api-key", CLIENT_KEY)
        page.press("#api-key", "Tab")
        with page.expect_request("**/api/chat/stream") as request:
            send(page, "three")
        assert request.value.headers["x-api-key"] == CLIENT_KEY
        assert "authorization" not in request.value.headers
        expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: three")
        problems.assert_none()
        page.context.close()
    finally:
        service.stop()
