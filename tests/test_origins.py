"""The server enforces ALLOWED_ORIGINS itself (origins.py): browsers send "simple" requests
(text/plain, forms) cross-origin without asking, so CORS alone does not protect the balance.
Preflights are free: they carry no key and must not spend anyone's rate budget."""
from __future__ import annotations

import json

import pytest

from tests.helpers import assert_error

ORIGIN = "https://chat.example.com"
STRANGER = "https://evil.example.com"
CHAT_POSTS = [("/api/chat/completion", {"message": "hi"}), ("/api/chat/history", {"messages": [{"role": "user", "content": "hi"}]}),
              ("/api/chat/stream", {"messages": "hi"}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]


@pytest.mark.parametrize("path,body", CHAT_POSTS)
def test_a_disallowed_origin_is_refused_before_any_upstream_call(make_app, simulator, path, body):
    client = make_app(ALLOWED_ORIGINS=ORIGIN).test_client()
    response = client.post(path, json=body, headers={"Origin": STRANGER})
    assert response.status_code == 403
    code = response.get_json()["code"] if "code" in response.get_json() else response.get_json()["error"]["code"]
    assert code == "origin_not_allowed"
    assert simulator.stats()["chat_requests"] == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_a_simple_cross_site_post_cannot_spend_the_balance(make_app, simulator, content_type):
    """The request a page on any site can make its visitors' browsers send without a preflight."""
    client = make_app(ALLOWED_ORIGINS=ORIGIN).test_client()
    headers = {"Origin": STRANGER} | ({"Content-Type": content_type} if content_type else {})
    response = client.post("/api/chat/completion", data='{"message": "hi"}', headers=headers)
    assert_error(response, 403, "origin_not_allowed")
    assert simulator.stats()["chat_requests"] == 0


@pytest.mark.parametrize("path,body", CHAT_POSTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_chat_bodies_must_be_json(client, simulator, content_type, path, body):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(path, data=json.dumps(body), headers=headers)
    assert response.status_code == 415
    error = response.get_json()
    assert (error["error"]["code"] if isinstance(error["error"], dict) else error["code"]) == "unsupported_media_type"
    assert simulator.stats()["chat_requests"] == 0


def test_allowed_origins_requests_without_origin_and_the_service_itself_pass(make_app, simulator):
    client = make_app(ALLOWED_ORIGINS=ORIGIN).test_client()
    assert client.post("/api/chat/completion", json={"message": "hi"}, headers={"Origin": ORIGIN}).status_code == 200
    assert client.post("/api/chat/completion", json={"message": "hi"}).status_code == 200
    # The test page, served by the service itself: same origin.
    same = client.post("/api/chat/completion", json={"message": "hi"}, headers={"Origin": "http://localhost"})
    assert same.status_code == 200


def test_production_without_allowed_origins_refuses_every_other_origin(make_app):
    client = make_app(NODE_ENV="production", KIMI_OFFLINE="1").test_client()
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}, headers={"Origin": ORIGIN}),
                 403, "origin_not_allowed")
    assert client.post("/api/chat/completion", json={"message": "hi"}).status_code == 200


def test_star_and_development_defaults_allow_any_origin(make_app):
    for config in ({"ALLOWED_ORIGINS": "*"}, {}):
        client = make_app(**config).test_client()
        assert client.post("/api/chat/completion", json={"message": "hi"}, headers={"Origin": STRANGER}).status_code == 200


def test_preflights_do_not_spend_the_rate_budget(make_app):
    """A keyed browser user behind a NAT preflights on every page load; those must not use
    up the address's budget."""
    client = make_app(ALLOWED_ORIGINS=ORIGIN, RATE_LIMIT_MAX_REQUESTS="3", RATE_LIMIT_WINDOW_MS="3600000").test_client()
    for _ in range(20):
        preflight = client.options("/api/chat/completion", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    for _ in range(3):
        assert client.post("/api/chat/completion", json={"message": "hi"}, headers={"Origin": ORIGIN}).status_code == 200
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}, headers={"Origin": ORIGIN}), 429, "rate_limited")


# --- ALLOWED_HOSTS: DNS rebinding. A page on a name its attacker points at this service's
# address is, to the browser, on the service's own origin, which passes the origin check above.
REBOUND = {"Host": "rebound.attacker.test:3000", "Origin": "http://rebound.attacker.test:3000"}


def test_without_allowed_hosts_a_rebound_page_passes_as_the_service_itself(make_app, simulator):
    # What ALLOWED_HOSTS is for: unset (the default, as before it existed), any host is answered.
    client = make_app(ALLOWED_ORIGINS=ORIGIN).test_client()
    assert client.post("/api/chat/completion", json={"message": "hi"}, headers=REBOUND).status_code == 200


@pytest.mark.parametrize("path,body", CHAT_POSTS)
def test_allowed_hosts_refuses_a_rebound_page_before_any_upstream_call(make_app, simulator, path, body):
    client = make_app(ALLOWED_ORIGINS=ORIGIN, ALLOWED_HOSTS="api.example.com").test_client()
    response = client.post(path, json=body, headers=REBOUND)
    assert response.status_code == 400
    if path.startswith("/v1/"):
        error = response.get_json()["error"]
        assert (error["code"], error["type"]) == ("host_not_allowed", "invalid_request_error")
    else:
        assert_error(response, 400, "host_not_allowed")
    assert "rebound.attacker.test" in response.get_data(as_text=True)
    assert simulator.stats()["chat_requests"] == 0


def test_allowed_hosts_guards_every_route_and_spends_no_rate_budget(make_app):
    client = make_app(ALLOWED_HOSTS="api.example.com", RATE_LIMIT_MAX_REQUESTS="1", KIMI_OFFLINE="1").test_client()
    for path in ("/", "/health", "/api/info", "/static/kimi-sdk.js"):
        assert_error(client.get(path, headers={"Host": "rebound.attacker.test"}), 400, "host_not_allowed")
    for _ in range(3):
        assert_error(client.post("/api/chat/completion", json={"message": "hi"}, headers={"Host": "rebound.attacker.test"}),
                     400, "host_not_allowed")
    # The refused requests counted nothing: the one request the limit allows is still there.
    assert client.post("/api/chat/completion", json={"message": "hi"}, headers={"Host": "api.example.com"}).status_code == 200


@pytest.mark.parametrize("host", ["api.example.com", "API.Example.com:3000", "api.example.com.", "chat.corp.example",
                                  "corp.example:8443", "localhost:3000", "127.0.0.1:3000", "10.0.0.7", "[::1]:3000", "[fd00::7]"])
def test_allowed_hosts_answers_its_names_their_subdomains_addresses_and_localhost(make_app, host):
    client = make_app(ALLOWED_HOSTS="api.example.com,.corp.example", KIMI_OFFLINE="1").test_client()
    assert client.get("/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["example.com", "api.example.com.evil.test", "xapi.example.com", "corp.example.evil.test",
                                  "notcorp.example", "localhost.evil.test"])
def test_allowed_hosts_refuses_look_alikes(make_app, host):
    client = make_app(ALLOWED_HOSTS="api.example.com,.corp.example", KIMI_OFFLINE="1").test_client()
    assert_error(client.get("/health", headers={"Host": host}), 400, "host_not_allowed")


def test_allowed_hosts_applies_to_the_host_a_trusted_proxy_forwarded(make_app):
    client = make_app(ALLOWED_HOSTS="api.example.com", TRUSTED_PROXY_COUNT="1", KIMI_OFFLINE="1").test_client()
    forwarded = {"Host": "127.0.0.1:3000", "X-Forwarded-For": "203.0.113.9"}
    assert client.get("/health", headers=forwarded | {"X-Forwarded-Host": "api.example.com"}).status_code == 200
    assert_error(client.get("/health", headers=forwarded | {"X-Forwarded-Host": "rebound.attacker.test"}),
                 400, "host_not_allowed")


def test_the_service_own_page_still_calls_it_on_an_allowed_host(make_app, simulator):
    client = make_app(ALLOWED_ORIGINS=ORIGIN, ALLOWED_HOSTS="api.example.com").test_client()
    own = {"Host": "api.example.com", "Origin": "http://api.example.com"}
    assert client.post("/api/chat/completion", json={"message": "hi"}, headers=own).status_code == 200
