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
