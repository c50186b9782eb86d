"""CORS: which origins may call the API, what a preflight allows, what a browser may read,
and that error responses are readable too."""
from __future__ import annotations

import logging

import pytest

from kimi_backend.config.parsers import ConfigError

ORIGIN = "https://chat.example.com"


def preflight(client, origin=ORIGIN, path="/api/chat/completion"):
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "Content-Type, x-api-key, Authorization"})


def test_unset_in_development_allows_any_origin(make_app):
    response = make_app().test_client().get("/api/info", headers={"Origin": "http://localhost:5173"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_unset_in_production_allows_none_and_warns(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="kimi_backend"):
        app = make_app(NODE_ENV="production")
    assert any("ALLOWED_ORIGINS" in record.getMessage() for record in caplog.records)
    client = app.test_client()
    assert "Access-Control-Allow-Origin" not in client.get("/api/info", headers={"Origin": ORIGIN}).headers
    assert "Access-Control-Allow-Origin" not in preflight(client).headers


def test_an_exact_list_allows_only_its_origins(make_app):
    client = make_app(ALLOWED_ORIGINS=f"{ORIGIN},http://localhost:5173").test_client()
    allowed = client.get("/api/info", headers={"Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in allowed.headers["Vary"]
    for stranger in ("https://evil.example.com", "https://chat.example.com.evil.example", "http://chat.example.com"):
        assert "Access-Control-Allow-Origin" not in client.get("/api/info", headers={"Origin": stranger}).headers
        assert "Access-Control-Allow-Origin" not in preflight(client, stranger).headers


def test_star_when_asked_for(make_app):
    response = make_app(NODE_ENV="production", ALLOWED_ORIGINS="*").test_client().get(
        "/api/info", headers={"Origin": "https://anywhere.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("value", ["https://chat.example.com/", "chat.example.com", "https://*.example.com"])
def test_malformed_origins_stop_startup(make_app, value):
    with pytest.raises(ConfigError, match="^ALLOWED_ORIGINS"):
        make_app(ALLOWED_ORIGINS=value)


def test_preflight_allows_the_auth_headers(make_app):
    response = preflight(make_app(ALLOWED_ORIGINS=ORIGIN, REQUIRE_API_KEY="true", VALID_API_KEYS="k").test_client())
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key", "authorization"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_responses_expose_request_id_retry_after_and_rate_limit_headers(make_app):
    response = make_app(ALLOWED_ORIGINS=ORIGIN).test_client().get("/api/info", headers={"Origin": ORIGIN})
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= exposed


def test_error_responses_carry_cors_headers(make_app):
    client = make_app(ALLOWED_ORIGINS=ORIGIN, REQUIRE_API_KEY="true", VALID_API_KEYS="k",
                      RATE_LIMIT_MAX_REQUESTS="1", RATE_LIMIT_WINDOW_MS="3600000").test_client()
    headers = {"Origin": ORIGIN}
    unauthorized = client.post("/api/chat/completion", json={"message": "hi"}, headers=headers)
    limited = client.get("/api/info", headers=headers)
    not_found = client.get("/api/no-such-route", headers=headers)
    upstream = client.post("/api/chat/completion", headers={**headers, "x-api-key": "k"},
                           json={"message": "sim:status=429 sim:type=rate_limit_reached_error"})
    assert [r.status_code for r in (unauthorized, limited, not_found)] == [401, 429, 404]
    for response in (unauthorized, limited, not_found):
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert response.is_json and response.get_json()["success"] is False
    assert "Retry-After" in limited.headers["Access-Control-Expose-Headers"]
    assert upstream.status_code == 429 and upstream.headers["Access-Control-Allow-Origin"] == ORIGIN
