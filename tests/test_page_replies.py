"""How the test page shows replies, in headless Chromium under the service's CSP: Markdown
rendered safely and incrementally, reasoning, an interrupted reply with Retry, what a screen
reader hears, and a layout that holds at 200% zoom. The service runs under gunicorn with the
session's simulator as its upstream, which the tests script with replies over many lines."""
from __future__ import annotations

import hashlib
import json
import re

from playwright.sync_api import expect

from tests.browser import open_page
from tests.helpers import ROOT

ARTIFACTS = ROOT / "test-artifacts"
OFFLINE = "[offline simulator]"
MARKDOWN = """

## A plan

Some **bold** text, `inline code` and a [link](https://example.com/docs).

- first
- second

| name | value |
|------|------:|
| a    | 1     |
| b    | 2     |

```python
print("hi")
```

<img src="x" onerror="window.__pwned = 'img'"> <script>window.__pwned = 'script'</script>

Inline: <a href="javascript:window.__pwned = 'link'">a trap</a>, <b onclick="window.__pwned = 'click'">bold trap</b>, H<sub>2</sub>O.

[another trap](javascript:window.__pwned='markdown') and ![a tracker](https://tracker.example/pixel.png)
"""
# A reply far longer than the page: many blocks, streamed in many small pieces.
LONG = "\n\n" + "\n\n".join(f"Paragraph {n}: the story goes on, a little more each time." for n in range(1, 61))
# Wider than any phone or zoomed window.
WIDE = "\n\n| " + " | ".join(f"column number {n}" for n in range(1, 9)) + " |\n|" + "---|" * 8 + "\n| " + \
    " | ".join(f"a rather long value {n}" for n in range(1, 9)) + " |\n\n```\n" + "x = 1; " * 60 + "\n```\n"


# Records, from now on, every piece of text the page gives the Markdown lexer (the page's own
# marked module: the same URL is the same module instance) and every element drawn into a
# reply: into its kept blocks, or into the tail that holds the block still growing.
RECORD_RENDERING = """async () => {
  window.__lexed = [];
  window.__drawn = { kept: [], tail: [] };
  const { Marked } = await import(new URL('static/vendor/marked.esm.js', document.baseURI).href);
  const lexer = Marked.prototype.lexer;
  Marked.prototype.lexer = function (source, options) {
    window.__lexed.push(source);
    return lexer.call(this, source, options);
  };
  new MutationObserver((records) => {
    for (const record of records) {
      const where = record.target.classList.contains('tail') ? 'tail' : record.target.classList.contains('text') ? 'kept' : null;
      for (const node of where ? record.addedNodes : []) {
        if (node.nodeType === Node.ELEMENT_NODE) window.__drawn[where].push(node.textContent);
      }
    }
  }).observe(document.getElementById('conversation'), { childList: true, subtree: true });
}"""


def reply(page):
    return page.locator(".message.assistant").last


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def test_markdown_is_rendered_and_nothing_in_it_runs_or_loads(browser, scripted_service, simulator):
    requested: list[str] = []
    page, problems = open_page(browser, scripted_service.url, locale="en-US", permissions=["clipboard-read", "clipboard-write"],
                               before_load=lambda page: page.on("request", lambda request: requested.append(request.url)))
    assert any(url.endswith("/static/vendor/purify.es.mjs") for url in requested)
    simulator.script([{"reply": MARKDOWN, "chunks": 40, "interval": 0.01}])
    send(page, "show me some Markdown")

    text = reply(page).locator(".text")
    expect(reply(page).locator(".note")).to_contain_text("Tokens:")
    expect(text.locator("h2")).to_have_text("A plan")
    expect(text.locator("strong")).to_have_text("bold")
    expect(text.locator("p code")).to_have_text("inline code")
    expect(text.locator("ul > li")).to_have_text(["first", "second"])
    expect(text.locator("table tr")).to_have_count(3)
    expect(text.locator("td[align=right]").first).to_have_text("1")
    expect(text.locator("pre code")).to_have_text('print("hi")\n')

    # HTML in the reply is shown as text (a plain <sub> aside): nothing in it runs, loads or links.
    assert page.evaluate("window.__pwned") is None
    expect(text.locator("img, script, b, [onclick], [onerror]")).to_have_count(0)
    expect(text).to_contain_text('''<img src="x" onerror="window.__pwned = 'img'"> <script>''')
    expect(text).to_contain_text('''<b onclick="window.__pwned = 'click'">bold trap''')
    expect(text.locator("sub")).to_have_text("2")
    expect(text.locator("a[href^='javascript']")).to_have_count(0)
    expect(text.get_by_text("another trap")).to_have_count(1)
    # The image is a link to its address instead, and was never fetched.
    tracker = text.locator("a[href='https://tracker.example/pixel.png']")
    expect(tracker).to_have_text("a tracker")
    assert not [url for url in requested if "tracker.example" in url]
    # Nothing at all came from elsewhere (the libraries are the service's own files, no CDN), and
    # the reply loaded nothing: every request is the page's files or an API call.
    own = (scripted_service.url + "/static/", scripted_service.url + "/api/")
    assert [url for url in requested if not url.startswith(own)] == [scripted_service.url + "/"], requested
    # Links leave the page safely.
    for link in (text.locator("a[href='https://example.com/docs']"), tracker):
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", "noopener noreferrer")

    # A code block copies its code.
    copy = text.locator(".code-block button.copy")
    expect(copy).to_have_text("Copy")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == 'print("hi")\n'
    problems.assert_none()
    page.context.close()


def test_the_markdown_libraries_are_vendored_unchanged_with_their_licences():
    """static/vendor/ holds the files its README names, as copied from their packages (the
    SHA-256 it gives), with the licence files it names."""
    vendor = ROOT / "static" / "vendor"
    readme = (vendor / "README.md").read_text()
    hashes = dict(re.findall(r"`([\w.]+\.m?js)`\s+([0-9a-f]{64})", readme))
    assert set(hashes) == {"marked.esm.js", "purify.es.mjs"}
    for name, digest in hashes.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, f"{name} is not the file README.md names"
    licences = set(re.findall(r"`(\w+\.LICENSE(?:-MPL)?)`", readme))
    assert licences == {"marked.LICENSE", "purify.LICENSE", "purify.LICENSE-MPL"}
    for name in licences:
        assert "licen" in (vendor / name).read_text().lower()


def test_a_long_reply_streams_without_redrawing_what_is_done(browser, scripted_service, simulator):
    page, problems = open_page(browser, scripted_service.url, locale="en-US")
    page.evaluate(RECORD_RENDERING)
    simulator.script([{"reply": LONG, "chunks": 400, "interval": 0.01}])
    send(page, "a long story")

    # Part way through (about a tenth of 4 s), the first paragraphs are finished: from now on
    # they are kept as they are, while the open one is drawn again as it grows.
    kept = reply(page).locator(".text > p")
    expect(kept.nth(5)).to_be_attached()
    first = page.evaluate_handle("document.querySelector('.message.assistant .text > p:nth-child(2)')")
    assert first.evaluate("node => node.textContent").startswith("Paragraph 1:")
    expect(reply(page)).to_have_attribute("aria-busy", "true")
    assert page.locator("#announcer").text_content() == "", "the reply was announced before it ended"

    expect(reply(page).locator(".note")).to_contain_text("Tokens:")
    expect(kept).to_have_count(61)
    expect(kept.last).to_have_text("Paragraph 60: the story goes on, a little more each time.")
    assert first.evaluate("node => node.isConnected"), "a finished paragraph was rendered again"
    expect(reply(page).locator(".tail")).to_be_empty()
    expect(reply(page)).not_to_have_attribute("aria-busy", "true")

    # The work per update does not grow with the reply (which would make a long one quadratic),
    # counted rather than timed: each finished block is drawn once, in order; each redraw of the
    # tail holds the one open block; and each update lexes what arrived since the last one plus,
    # again, at most the block (and blank line) that one left open.
    paragraphs = [f"Paragraph {n}: the story goes on, a little more each time." for n in range(1, 61)]
    block = max(map(len, paragraphs))
    drawn = page.evaluate("window.__drawn")
    assert drawn["kept"] == [f"{OFFLINE} ", *paragraphs]
    assert len(drawn["tail"]) > 5 and max(map(len, drawn["tail"])) <= block, max(drawn["tail"], key=len)
    lexed = page.evaluate("window.__lexed")
    whole = json.loads(page.evaluate("localStorage.getItem('kimi-test-page.conversations')"))[0]["conversation"]["messages"][1]["content"]
    assert len(lexed) > 5
    assert sum(map(len, lexed)) <= len(whole) + len(lexed) * (block + 2), f"{len(lexed)} updates lexed {sum(map(len, lexed))} characters"
    # Announced once, whole, when it ended, by a polite live region; the growing reply is in none.
    expect(page.locator("#announcer")).to_have_text(f"Kimi replied: {OFFLINE} " + " ".join(paragraphs))
    expect(page.locator("#announcer")).to_have_attribute("aria-live", "polite")
    assert not reply(page).evaluate("item => Boolean(item.closest('[aria-live]'))"), "every token of the reply would be read out"
    problems.assert_none()
    page.context.close()


def test_reasoning_streams_into_a_collapsible_block_and_goes_back_with_the_next_turn(browser, scripted_service, simulator):
    page, problems = open_page(browser, scripted_service.url, locale="en-US")
    simulator.script([{"reasoning": 6, "chunks": 4, "interval": 0.25}, {}])
    send(page, "think first")

    thinking = reply(page).locator("details.reasoning")
    expect(thinking.locator("summary")).to_have_text("Thinking…")
    expect(thinking).to_have_attribute("open", "")
    expect(thinking.locator(".reasoning-text")).to_contain_text("Thinking step 2 (offline).")
    assert reply(page).evaluate(
        "item => item.querySelector('details').compareDocumentPosition(item.querySelector('.text')) & Node.DOCUMENT_POSITION_FOLLOWING")

    # Once the answer starts the block closes and says what it holds; it opens on a click.
    expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: think first")
    expect(thinking.locator("summary")).to_have_text("Reasoning")
    expect(thinking).not_to_have_attribute("open", "")
    thinking.locator("summary").click()
    expect(thinking.locator(".reasoning-text")).to_have_text(
        "".join(f"Thinking step {n} (offline). " for n in range(1, 7)), use_inner_text=False)

    with page.expect_request("**/api/chat/stream") as request:
        send(page, "and then?")
    earlier = request.value.post_data_json["messages"][1]
    assert earlier["role"] == "assistant"
    assert earlier["reasoning"] == "".join(f"Thinking step {n} (offline). " for n in range(1, 7))
    problems.assert_none()
    page.context.close()


def test_a_reply_in_one_piece_shows_its_reasoning_too(browser, scripted_service, simulator):
    page, problems = open_page(browser, scripted_service.url, locale="en-US")
    page.get_by_label("Multi-turn").check()
    simulator.script([{"reasoning": 2}])
    send(page, "no stream")
    expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: no stream")
    expect(reply(page).locator("details.reasoning summary")).to_have_text("Reasoning")
    expect(reply(page).locator(".reasoning-text")).to_contain_text("Thinking step 2")
    problems.assert_none()
    page.context.close()


def test_an_interrupted_reply_keeps_its_text_and_can_be_retried(browser, scripted_service, simulator):
    page, problems = open_page(browser, scripted_service.url, locale="en-US")
    simulator.script([{"chunks": 10, "break_after": 4}, {}])
    send(page, "tell me")

    expect(reply(page).locator(".note")).to_have_text("The reply was interrupted.")
    expect(page.locator("#notice")).to_contain_text("The request failed:")
    partial = reply(page).locator(".text").text_content().strip()
    assert partial and f"{OFFLINE} You said: tell me".startswith(partial)
    retry = reply(page).get_by_role("button", name="Retry")
    expect(retry).to_be_visible()

    retry.click()
    expect(reply(page).locator(".text")).to_have_text(f"{OFFLINE} You said: tell me")
    expect(page.locator(".message.user")).to_have_count(1)
    expect(page.locator(".message.assistant")).to_have_count(1)
    expect(retry).to_be_hidden()
    expect(page.locator("#notice")).to_be_hidden()
    problems.assert_none()
    page.context.close()


def test_wide_replies_scroll_in_place_at_200_percent_zoom_and_phone_width(browser, scripted_service, simulator):
    # A 1280-pixel window at 200% zoom lays the page out 640 CSS pixels wide; 320 is WCAG's reflow width.
    for width in (640, 320):
        page, problems = open_page(browser, scripted_service.url, locale="zh-CN", viewport={"width": width, "height": 800})
        simulator.script([{"reply": WIDE}])
        send(page, "一张很宽的表")
        table = reply(page).locator(".table-scroll")
        expect(table.locator("th")).to_have_count(8)
        # The code block comes after the table in the stream: measure it once all of it is in.
        expect(reply(page).locator("pre")).to_contain_text(("x = 1; " * 60).strip())
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), f"the page scrolls sideways at {width}px"
        assert table.evaluate("box => box.scrollWidth > box.clientWidth"), "the table does not scroll in its own box"
        assert reply(page).locator("pre").evaluate("box => box.scrollWidth > box.clientWidth")
        page.screenshot(path=ARTIFACTS / f"test-page-wide-reply-{width}px.png")
        font = page.locator("#message").evaluate("box => parseFloat(getComputedStyle(box).fontSize)")
        assert font >= 16
        problems.assert_none()
        page.context.close()
