"""The Vite + React example (`examples/react/`): `npm ci`, `tsc --noEmit` over the app and the
SDK's and hook's type declarations, a Vite build, then the built app in headless Chromium,
served from its own loopback origin and calling the real service (gunicorn, offline simulator)
on another, with ALLOWED_ORIGINS naming the app's origin alone: real CORS, both ways."""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from tests.browser import RECORD_VIOLATIONS, PageProblems
from tests.helpers import ROOT, free_port, require
from tests.servers import Service

EXAMPLE = ROOT / "examples" / "react"
OFFLINE = "[offline simulator]"


def run(command: list[str], timeout: float, **env: str) -> str:
    """Runs a command in the example's folder; its output, or a failure that shows it."""
    result = subprocess.run(command, cwd=EXAMPLE, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed():
    """The example's locked dependencies in examples/react/node_modules (`npm ci`). Vite 8 needs
    npm 11 and Node 20.19 or later."""
    npm = shutil.which("npm")
    require(npm is not None, "npm")
    major = int(run([npm, "--version"], 30).split(".")[0])
    require(major >= 11, f"npm 11 or later (found {major})")
    run([npm, "ci", "--no-audit", "--no-fund"], 600)
    return EXAMPLE / "node_modules" / ".bin"


class StaticSite:
    """A directory served over HTTP on a loopback port, from a thread."""

    def __init__(self, directory: Path, port: int):
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                """No access log on the test's output."""

        self.server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=str(directory)))
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def example(installed, tmp_path_factory):
    """The app built against a service that allows its origin (and no other), both running."""
    port = free_port()
    service = Service(ALLOWED_ORIGINS=f"http://127.0.0.1:{port}", UPSTREAM_MAX_RETRIES="0", RATE_LIMIT_MAX_REQUESTS="10000")
    dist = tmp_path_factory.mktemp("react-dist")
    run([str(installed / "vite"), "build", "--outDir", str(dist), "--emptyOutDir"], 300, VITE_KIMI_URL=service.url)
    site = StaticSite(dist, port)
    yield SimpleNamespace(url=site.url, service=service, dist=dist)
    site.stop()
    service.stop()


def open_app(browser, url: str):
    page = browser.new_context(locale="en-US").new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    problems = PageProblems(page)
    page.goto(url)
    return page, problems


def test_the_app_and_the_sdk_types_check(installed):
    assert run([str(installed / "tsc"), "--noEmit", "--pretty", "false"], 300) == ""


def readme_component(marker: str) -> str:
    """The first JSX block after `marker` in the README, adapted to the example: the SDK's files
    imported from static/, the service's address from the build."""
    section = (ROOT / "README.md").read_text().split(marker, 1)[1]
    code = re.search(r"```jsx\n(.*?)```", section, re.S).group(1)
    lines = [re.sub(r"from '\./(kimi-sdk|kimi-react)\.js'", r"from '../../../static/\1.js'", line)
             for line in code.splitlines(keepends=True)]
    last_import = max(index for index, line in enumerate(lines) if "../../../static/" in line)
    lines.insert(last_import + 1, "import { KIMI_URL } from './config';\n")
    adapted = "".join(lines).replace("baseURL: 'http://localhost:3000'", "baseURL: KIMI_URL")
    assert "baseURL: KIMI_URL" in adapted
    return adapted


def test_the_readme_react_examples_are_the_apps_components():
    """The README's two React examples, with only the import paths and the service's address
    adapted, are the components the browser test below runs."""
    assert (EXAMPLE / "src" / "ChatComponent.jsx").read_text() == readme_component("### In React")
    assert (EXAMPLE / "src" / "ReadmeChat.jsx").read_text() == readme_component("**The hook.**")


def test_the_hook_and_the_original_component_work_from_another_origin(browser, example):
    page, problems = open_app(browser, example.url)
    hook = page.locator("section", has=page.get_by_role("heading", name="useKimiChat"))
    expect(page.get_by_role("heading", name="Kimi + React")).to_be_visible()
    options = hook.locator("select option")
    expect(options.nth(2)).to_be_attached()
    chosen = options.nth(2).get_attribute("value")
    hook.locator("select").select_option(chosen)

    message = hook.get_by_label("Message")
    message.fill("hello sim:reasoning=2 sim:chunks=8 sim:interval=0.05")
    with page.expect_request(f"{example.service.url}/api/chat/stream") as first:
        hook.get_by_role("button", name="Send").click()
    assert first.value.post_data_json["model"] == chosen
    expect(message).to_have_value("")
    replies = hook.locator("li.assistant")
    expect(replies.last.locator(".content")).to_have_text(f"{OFFLINE} You said: hello")
    expect(replies.last.locator(".reasoning")).to_contain_text("Thinking step 2 (offline).")
    expect(hook.locator(".status")).to_have_text("Status: ready")
    expect(hook.locator(".usage")).to_have_text(re.compile(r"^Tokens: \d+$"))

    # The next turn carries the earlier reply back with its reasoning.
    message.fill("and again")
    with page.expect_request(f"{example.service.url}/api/chat/stream") as second:
        hook.get_by_role("button", name="Send").click()
    earlier = second.value.post_data_json["messages"][1]
    assert earlier["role"] == "assistant" and earlier["reasoning"].startswith("Thinking step 1")
    expect(replies.last.locator(".content")).to_have_text(f"{OFFLINE} You said: and again")

    # Stop part way; an error with its Retry-After, and Retry.
    message.fill("a long story sim:chunks=60 sim:interval=0.1")
    hook.get_by_role("button", name="Send").click()
    expect(replies.last.locator(".content")).to_contain_text("offline")
    expect(hook.locator(".status")).to_have_text("Status: streaming")
    hook.get_by_role("button", name="Stop").click()
    expect(replies.last.locator(".state")).to_have_text("stopped")
    message.fill("hi sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=7")
    hook.get_by_role("button", name="Send").click()
    expect(hook.get_by_role("alert")).to_contain_text("(upstream_rate_limited, retry in 7 s)")
    expect(hook.locator(".status")).to_have_text("Status: error")
    expect(hook.get_by_role("button", name="Retry")).to_be_visible()

    # The README's hook example.
    short = page.locator("section", has=page.get_by_role("heading", name="The README's hook example"))
    short.locator("textarea").fill("short sim:reasoning=1")
    short.get_by_role("button", name="发送").click()
    expect(short.locator("details")).to_contain_text("Thinking step 1")
    expect(short.locator(".assistant p")).to_have_text(f"{OFFLINE} You said: short")
    expect(short.locator("p").last).to_have_text(re.compile(r"^Tokens: \d+$"))
    expect(short.locator("textarea")).to_have_value("")

    # The original README component, as written, on the same page.
    original = page.locator("section", has=page.get_by_role("heading", name="The original example"))
    original.get_by_placeholder("输入你的消息…").fill("你好 sim:delay=1")
    button = original.get_by_role("button")
    button.click()
    expect(button).to_have_text("发送中…")
    expect(button).to_be_disabled()
    expect(original.get_by_role("heading", name="回复")).to_be_visible()
    expect(original.locator("p")).to_have_text(f"{OFFLINE} You said: 你好")
    expect(button).to_have_text("发送")
    problems.assert_none("429")
    page.context.close()


def test_an_origin_the_service_does_not_allow_is_refused_by_cors(browser, example):
    elsewhere = StaticSite(example.dist, free_port())
    page, problems = open_app(browser, elsewhere.url)
    hook = page.locator("section", has=page.get_by_role("heading", name="useKimiChat"))
    hook.get_by_label("Message").fill("hello")
    hook.get_by_role("button", name="Send").click()
    expect(hook.get_by_role("alert")).to_have_text("Could not reach the server (network error). (network_error)")
    expect(hook.locator("select option")).to_have_count(1)
    assert problems.console_errors and all("CORS" in text or "Failed to fetch" in text or "ERR_FAILED" in text
                                           for text in problems.console_errors), problems.console_errors
    page.context.close()
    elsewhere.stop()
