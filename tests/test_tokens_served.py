"""Browser tokens as `make run` serves them (gunicorn): the README's site-backend examples
(Flask and Express) run against it (its other JavaScript examples at least parsed by Node); a
revocation holding on every worker with the default storage; and with a real redis-server
shared by two instances of two workers each, a revocation on one instance holding on every
worker of both and a token's own limit exact across them."""
from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys

import pytest
import requests

from tests.helpers import LONG_WINDOW_MS, ROOT, free_port, json_lines, npm_installed, require_binary, wait_until
from tests.servers import Process, RedisServer, fetch_all
from tests.token_support import ADMIN, SITE, token_config


@pytest.fixture
def redis_server():
    """A fresh redis-server for this test (skipped without one, except under CI)."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def two_instances(redis_server, served):
    env = token_config(RATE_LIMIT_STORAGE_URI=redis_server.url, RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS,
                       RATE_LIMIT_MAX_REQUESTS="1000", WEB_CONCURRENCY="2")
    return served(**env), served(**env)


def mint(service, **body) -> str:
    response = requests.post(service.url + "/api/tokens", json=body, headers={"x-admin-key": ADMIN}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["token"]


def headers(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Origin": SITE}


def test_a_revocation_on_one_instance_holds_on_every_worker_of_both(two_instances):
    first, second = two_instances
    token = mint(first, subject="user-1")
    urls = [service.url + "/api/chat/models" for service in (first, second) * 4]
    assert [r.status_code for r in fetch_all(urls, headers(token))] == [200] * 8
    response = requests.delete(second.url + "/api/tokens/user-1", headers={"x-admin-key": ADMIN}, timeout=10)
    assert response.status_code == 200
    refused = fetch_all(urls, headers(token))
    assert [(r.status_code, r.json()["code"]) for r in refused] == [(401, "token_revoked")] * 8
    # A token minted afterwards, on either instance, is good everywhere.
    fresh = mint(first, subject="user-1")
    assert [r.status_code for r in fetch_all(urls, headers(fresh))] == [200] * 8


def test_a_tokens_own_limit_is_exact_across_instances(two_instances):
    token = mint(two_instances[0], subject="user-2", rate_limit={"max_requests": 5, "window_ms": 3600000})
    # One request to each instance first, so both have counted (which of the concurrent
    # requests below win is up to the scheduler), then ten at once across both.
    responses = [requests.get(service.url + "/api/chat/models", headers=headers(token), timeout=10)
                 for service in two_instances]
    assert [r.status_code for r in responses] == [200, 200]
    urls = [service.url + "/api/chat/models" for service in itertools.islice(itertools.cycle(two_instances), 10)]
    responses += fetch_all(urls, headers(token))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 7
    assert {r.json()["code"] for r in responses if r.status_code == 429} == {"rate_limited"}


def worker_pids(service, route: str) -> set[int]:
    """The workers that wrote an access line for `route`."""
    lines = json_lines(service.log())
    return {line["pid"] for line in lines if line.get("route") == route}


def test_with_the_default_storage_a_revocation_holds_on_every_worker(served, tmp_path):
    # memory:// under two workers: revocations live in the host's shared counter store.
    service = served(**token_config(WEB_CONCURRENCY="2", RUNTIME_DIRECTORY=str(tmp_path)))
    wait_until(lambda: fetch_all([service.url + "/health"] * 12) and len(worker_pids(service, "/health")) == 2,
               timeout=60, message="both workers answering /health")
    token = mint(service, subject="user-1")
    response = requests.delete(service.url + "/api/tokens/user-1", headers={"x-admin-key": ADMIN}, timeout=10)
    assert response.status_code == 200
    refused = []
    while len(worker_pids(service, "/api/chat/models")) < 2 and len(refused) < 120:
        refused += fetch_all([service.url + "/api/chat/models"] * 12, headers(token))
    assert len(worker_pids(service, "/api/chat/models")) == 2, "both workers should have answered"
    assert {(r.status_code, r.json().get("code")) for r in refused} == {(401, "token_revoked")}


def readme_example(heading: str, language: str) -> str:
    """The first `language` code block after `heading` in the README."""
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(heading):]
    return re.search(rf"```{language}\n(.*?)```", after, flags=re.S).group(1)


@pytest.mark.parametrize("heading", ["**The browser side**", "### Anonymous sessions"])
def test_the_readmes_javascript_examples_parse(heading, tmp_path):
    node = require_binary("node")
    example = tmp_path / "example.mjs"
    example.write_text(readme_example(heading, "js"))
    result = subprocess.run([node, "--check", str(example)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_readmes_flask_example_hands_a_logged_in_user_a_working_token(served, monkeypatch, tmp_path):
    service = served(**token_config())
    monkeypatch.setenv("KIMI_URL", service.url)
    monkeypatch.setenv("KIMI_ADMIN_KEY", ADMIN)
    # The example as the site's own module (Flask finds its root path through sys.modules).
    path = tmp_path / "site_backend.py"
    path.write_text(readme_example("**The site's backend in Python (Flask)**", "python"))
    spec = importlib.util.spec_from_file_location("site_backend", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "site_backend", module)
    spec.loader.exec_module(module)
    site = module.app
    site.secret_key = "the site's own session secret"
    browser = site.test_client()
    with browser.session_transaction() as session:
        session["user_id"] = 42
    response = browser.post("/chat-token")
    assert response.status_code == 200, response.get_data(as_text=True)
    data = response.get_json()
    assert data["subject"] == "user-42" and data["expires_at"].endswith("Z")
    chat = requests.post(service.url + "/api/chat/completion", json={"message": "hi"}, headers=headers(data["token"]),
                         timeout=10)
    assert chat.status_code == 200 and chat.json()["data"]["message"].endswith("You said: hi")


EXPRESS_PACKAGE = ROOT / "tests" / "express-site"


def test_the_readmes_express_example_hands_a_logged_in_user_a_working_token(served, tmp_path):
    node = require_binary("node")
    package = npm_installed(EXPRESS_PACKAGE, "express")
    service = served(**token_config())
    example = readme_example("**The same in Node (Express)**", "js")
    app_line = "const app = express(); // your site's app, with its own login and session\n"
    assert example.count(app_line) == 1
    # The site's own login stands in as a session with its user; then the example as written,
    # listening on a port of ours.
    login = "app.use((req, res, next) => { req.session = { userId: 42 }; next(); });\n"
    port = free_port()
    script = tmp_path / "site.mjs"
    script.write_text(example.replace(app_line, app_line + login)
                      + f"app.listen({port}, '127.0.0.1', () => console.log('listening'));\n")
    (tmp_path / "node_modules").symlink_to(package / "node_modules")  # where `import 'express'` looks

    def chat_token(admin_key: str) -> requests.Response:
        """The example's answer to a logged-in user's POST /chat-token, run with `admin_key`."""
        site = Process([node, str(script)], {**os.environ, "KIMI_URL": service.url, "KIMI_ADMIN_KEY": admin_key})
        try:
            site.await_ready(lambda: "listening" in site.log(), 30, "the Express example")
            return requests.post(f"http://127.0.0.1:{port}/chat-token", timeout=10)
        finally:
            site.stop()

    response = chat_token(ADMIN)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["subject"] == "user-42" and data["expires_at"].endswith("Z")
    chat = requests.post(service.url + "/api/chat/completion", json={"message": "hi"}, headers=headers(data["token"]),
                         timeout=10)
    assert chat.status_code == 200 and chat.json()["data"]["message"].endswith("You said: hi")
    # The service refusing the site's request is the example's own 502, not a token.
    refused = chat_token("not-the-admin-key")
    assert (refused.status_code, refused.json()) == (502, {"error": "no chat token"})


@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_the_readmes_pages_ask_the_route_its_site_backends_define(readme):
    text = (ROOT / readme).read_text()
    defined = set(re.findall(r"""app\.post\(["'](/[^"']+)["']""", text))
    fetched = set(re.findall(r"""fetch\(['"](/[^'"]+)['"]""", text))
    assert defined == {"/chat-token"} and fetched == defined
