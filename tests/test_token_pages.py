"""Browser tokens in a real headless Chromium: a site's page, served by a tiny static server on
other loopback origins, holds a minted token and calls the service (under gunicorn) with plain
`fetch`, so the browser's CORS and the server's own origin check both run for real.

Three origins: A, the site the token is minted for; B, allowed by ALLOWED_ORIGINS but not by
the token; C, allowed by neither. The same page is served on all three."""
from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


import pytest
import requests

from tests.helpers import json_lines, wait_until
from tests.servers import Service
from tests.token_support import ADMIN, token_config

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A site's page</title>
<script src="config.js"></script><script src="app.js" defer></script></head>
<body><pre id="result"></pre></body></html>
"""

# What a site's page does: `?mode=token` uses the token its backend rendered into config.js;
# `?mode=anonymous` first asks the service for an anonymous session.
APP_JS = """
const { baseURL, token } = window.KIMI;
const mode = new URLSearchParams(location.search).get('mode');

async function call(method, path, { body, bearer } = {}) {
  const headers = {};
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  try {
    const response = await fetch(baseURL + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const json = (response.headers.get('Content-Type') || '').includes('json');
    return { status: response.status, body: json ? await response.json() : await response.text() };
  } catch (error) {
    return { status: 0, error: error.name };
  }
}

async function run() {
  const results = {};
  let held = mode === 'token' ? token : null;
  if (mode === 'anonymous') {
    results.session = await call('POST', '/api/session');
    held = results.session.body?.data?.token;
  }
  if (held) {
    results.completion = await call('POST', '/api/chat/completion', { body: { message: `hello from ${location.port}` }, bearer: held });
    results.models = await call('GET', '/api/chat/models', { bearer: held });
    results.stream = await call('POST', '/api/chat/stream', { body: { messages: 'stream please' }, bearer: held });
  }
  const output = document.getElementById('result');
  output.textContent = JSON.stringify(results);
  output.dataset.done = 'true';
}

run();
"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        """Writes nothing: the test's output is enough."""


class StaticSite:
    """A directory served over HTTP on a loopback port: one origin."""

    def __init__(self, directory):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page's directory and three origins serving it: A, B and C."""
    directory = tmp_path_factory.mktemp("site")
    (directory / "index.html").write_text(PAGE)
    (directory / "app.js").write_text(APP_JS)
    origins = [StaticSite(directory) for _ in range(3)]
    yield directory, origins
    for origin in origins:
        origin.stop()


@pytest.fixture(scope="module")
def service(site):
    """The service under gunicorn (offline simulator) allowing A and B, with anonymous sessions,
    and a token for A written into the page's config.js, as the site's backend would."""
    directory, (a, b, _c) = site
    service = Service(**token_config(ALLOWED_ORIGINS=f"{a.origin},{b.origin}", ANONYMOUS_TOKENS="true",
                                     RATE_LIMIT_MAX_REQUESTS="1000"))
    minted = requests.post(service.url + "/api/tokens", json={"subject": "site-user-1", "origins": [a.origin]},
                           headers={"x-admin-key": ADMIN}, timeout=10)
    assert minted.status_code == 200, minted.text
    config = {"baseURL": service.url, "token": minted.json()["data"]["token"]}
    (directory / "config.js").write_text(f"window.KIMI = {json.dumps(config)};\n")
    yield service
    service.stop()


def run_page(browser, origin: str, mode: str) -> dict:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{origin}/index.html?mode={mode}")
    page.wait_for_selector("#result[data-done]", state="attached")
    results = json.loads(page.text_content("#result"))
    context.close()
    return results


def access_lines(service, route: str, method: str = "POST") -> list[dict]:
    """The service's access-log lines for `method route` (preflights have lines of their own)."""
    lines = json_lines(service.log())
    return [line for line in lines if line.get("logger") == "kimi_backend.access" and line.get("route") == route
            and line.get("method") == method]


def test_a_page_on_the_tokens_origin_chats_with_it(browser, site, service):
    _, (a, _b, _c) = site
    results = run_page(browser, a.origin, "token")
    assert results["completion"]["status"] == 200
    assert results["completion"]["body"]["data"]["message"].endswith(f"You said: hello from {a.origin.rsplit(':', 1)[1]}")
    assert results["models"]["status"] == 200 and results["models"]["body"]["data"]
    assert results["stream"]["status"] == 200 and results["stream"]["body"].rstrip().endswith("data: [DONE]")
    assert any(line["client"] == "sub:site-user-1" and line["status"] == 200
               for line in access_lines(service, "/api/chat/completion"))


def test_an_allowed_origin_the_token_is_not_bound_to_is_refused_by_the_server(browser, site, service):
    # CORS lets B read the answer, so the refusal seen here is the server's own origin check.
    _, (_a, b, _c) = site
    results = run_page(browser, b.origin, "token")
    for name in ("completion", "models", "stream"):
        assert results[name]["status"] == 403, results[name]
        assert results[name]["body"]["code"] == "origin_not_allowed"


def test_a_disallowed_origin_gets_nothing(browser, site, service):
    _, (_a, _b, c) = site
    completions_before = len(access_lines(service, "/api/chat/completion"))
    results = run_page(browser, c.origin, "token")
    # The preflight is refused (C is not in ALLOWED_ORIGINS): the chat requests are never sent.
    assert [results[name] for name in ("completion", "models", "stream")] == [{"status": 0, "error": "TypeError"}] * 3
    assert len(access_lines(service, "/api/chat/completion")) == completions_before


def test_anonymous_sessions_for_allowed_pages_only(browser, site, service):
    _, (a, _b, c) = site
    results = run_page(browser, a.origin, "anonymous")
    assert results["session"]["status"] == 200
    assert results["session"]["body"]["data"]["subject"].startswith("anon:")
    assert results["completion"]["status"] == 200 and results["stream"]["status"] == 200
    # From C the session request is a "simple" request (no preflight): it reaches the server,
    # which refuses it itself; CORS then hides even the refusal from the page.
    refused = run_page(browser, c.origin, "anonymous")
    assert refused == {"session": {"status": 0, "error": "TypeError"}}
    sessions = wait_until(lambda: (lines := access_lines(service, "/api/session")) and len(lines) >= 2 and lines,
                          timeout=10, message="both session requests in the access log")
    assert sorted((line["status"], line["outcome"]) for line in sessions) == [(200, "ok"), (403, "origin_not_allowed")]
