"""Upstream failures map onto our statuses; retries are bounded and only where they help."""
from __future__ import annotations

import time

import pytest
from urllib3.exceptions import (ClosedPoolError, ConnectTimeoutError, LocationParseError, MaxRetryError,
                                NewConnectionError, ProtocolError, ProxyError, ReadTimeoutError, ResponseError, SSLError)

from kimi_backend.moonshot.client import _failure
from tests.helpers import assert_error
from tests.simulator_support import simulator_of_its_own

MAPPINGS = [
    # (directives in the message, our status, our code)
    ("sim:status=400 sim:type=invalid_request_error sim:message=Input_token_length_too_long", 400, "upstream_rejected"),
    ("sim:status=400 sim:type=content_filter", 400, "content_filter"),
    ("sim:status=401 sim:type=invalid_authentication_error", 502, "upstream_auth_failed"),
    ("sim:status=403 sim:type=permission_denied_error", 502, "upstream_auth_failed"),
    ("sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=30", 429, "upstream_rate_limited"),
    ("sim:status=429 sim:type=exceeded_current_quota_error", 429, "upstream_quota_exceeded"),
    ("sim:status=403 sim:type=exceeded_current_quota_error", 429, "upstream_quota_exceeded"),
    ("sim:status=500 sim:type=server_error", 502, "upstream_error"),
    ("sim:status=503", 502, "upstream_error"),
]


@pytest.mark.parametrize("route", ["/api/chat/completion", "/api/chat/stream"])
@pytest.mark.parametrize("directives,status,code", MAPPINGS)
def test_upstream_error_mapping(make_app, simulator, route, directives, status, code):
    client = make_app(UPSTREAM_MAX_RETRIES="0").test_client()
    field = "message" if route.endswith("completion") else "messages"
    response = client.post(route, json={field: f"hello {directives}"})
    body = assert_error(response, status, code)
    if status == 429:
        assert int(response.headers["Retry-After"]) >= 1
    if code == "upstream_rejected":
        assert "Input token length too long" in body["error"]
    if code == "upstream_auth_failed":
        assert "KIMI_API_KEY" in body["error"]


def test_upstream_retry_after_is_passed_on(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="0").test_client()
    response = client.post("/api/chat/completion",
                           json={"message": "sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=30"})
    assert response.headers["Retry-After"] == "30"


def test_unknown_model_is_400_naming_the_model(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-nonexistent"})
    body = assert_error(response, 400, "model_not_found")
    assert "kimi-nonexistent" in body["error"]


def test_upstream_timeout_is_504(make_app):
    # A simulator of its own: a hung request stays in flight there until its server stops, and
    # later tests read the session simulator's in_flight gauge (test_streaming waits for it).
    with simulator_of_its_own() as upstream:
        client = make_app(KIMI_BASE_URL=upstream.base_url, UPSTREAM_READ_TIMEOUT_S="0.3",
                          UPSTREAM_COMPLETION_TIMEOUT_S="0.3", UPSTREAM_MAX_RETRIES="0").test_client()
        assert_error(client.post("/api/chat/completion", json={"message": "sim:hang"}), 504, "upstream_timeout")
        assert_error(client.post("/api/chat/stream", json={"messages": "sim:hang"}), 504, "upstream_timeout")


def test_unreachable_upstream_is_503(make_app):
    client = make_app(KIMI_BASE_URL="http://127.0.0.1:9/v1", UPSTREAM_MAX_RETRIES="0").test_client()
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}), 503, "upstream_unavailable")
    assert_error(client.post("/api/chat/stream", json={"messages": "hi"}), 503, "upstream_unavailable")


@pytest.mark.parametrize("failure", [{"status": 429, "type": "rate_limit_reached_error"},
                                     {"status": 429, "type": "engine_overloaded_error"},
                                     {"status": 500, "type": "server_error"},
                                     {"status": 503}])
def test_transient_failures_are_retried(make_app, simulator, failure):
    client = make_app(UPSTREAM_MAX_RETRIES="2").test_client()
    simulator.script([failure, failure, {}])
    response = client.post("/api/chat/completion", json={"message": "hi"})
    assert response.status_code == 200
    assert simulator.stats()["chat_requests"] == 3


def test_retries_are_bounded(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="2").test_client()
    simulator.script([{"status": 503}] * 5)
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}), 502, "upstream_error")
    assert simulator.stats()["chat_requests"] == 3


def test_quota_errors_are_never_retried(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="3").test_client()
    simulator.script([{"status": 429, "type": "exceeded_current_quota_error"}, {}])
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}), 429, "upstream_quota_exceeded")
    assert simulator.stats()["chat_requests"] == 1


def test_client_errors_are_never_retried(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="3").test_client()
    simulator.script([{"status": 400, "type": "invalid_request_error"}, {}])
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}), 400, "upstream_rejected")
    assert simulator.stats()["chat_requests"] == 1


def test_retry_honours_retry_after(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="1", UPSTREAM_RETRY_BACKOFF_S="0.001").test_client()
    simulator.script([{"status": 429, "type": "rate_limit_reached_error", "retry_after": 1}, {}])
    started = time.monotonic()
    assert client.post("/api/chat/completion", json={"message": "hi"}).status_code == 200
    assert time.monotonic() - started >= 1.0


def test_retry_after_beyond_the_cap_is_not_waited_for(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="2", UPSTREAM_RETRY_MAX_WAIT_S="2").test_client()
    simulator.script([{"status": 429, "type": "rate_limit_reached_error", "retry_after": 60}, {}])
    response = client.post("/api/chat/completion", json={"message": "hi"})
    assert_error(response, 429, "upstream_rate_limited")
    assert response.headers["Retry-After"] == "60"
    assert simulator.stats()["chat_requests"] == 1


def test_streams_are_never_retried(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="3").test_client()
    simulator.script([{"status": 503}, {}])
    assert_error(client.post("/api/chat/stream", json={"messages": "hi"}), 502, "upstream_error")
    assert simulator.stats()["chat_requests"] == 1


def test_retry_waits_add_up_to_at_most_the_budget(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="3", UPSTREAM_RETRY_MAX_WAIT_S="1.5").test_client()
    limited = {"status": 429, "type": "rate_limit_reached_error", "retry_after": 1}
    simulator.script([limited, limited, {}])
    started = time.monotonic()
    response = client.post("/api/chat/completion", json={"message": "hi"})
    # One 1-second wait fits the 1.5-second budget; a second would not, so the 429 goes back.
    assert_error(response, 429, "upstream_rate_limited")
    assert response.headers["Retry-After"] == "1"
    assert simulator.stats()["chat_requests"] == 2
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("failure,status,retryable", [
    (MaxRetryError(None, "/", ConnectTimeoutError(None, "timed out")), 503, True),
    (MaxRetryError(None, "/", NewConnectionError(None, "refused")), 503, True),
    (MaxRetryError(None, "/", ProxyError("proxy", OSError())), 503, True),
    (MaxRetryError(None, "/", ResponseError("too many")), 502, False),
    (ProtocolError("Connection aborted.", ConnectionResetError()), 503, True),
    (ConnectionResetError(), 503, True),
    (ClosedPoolError(None, "closed"), 503, True),
    (SSLError("bad certificate"), 503, True),
    (ReadTimeoutError(None, "/", "read timed out"), 504, False),
    (LocationParseError("http://["), 502, False),
])
def test_send_failures_map_as_requests_maps_them(failure, status, retryable):
    """A failed send is what `requests`' adapter would make of it: a connect timeout or a broken
    connection 503 (retried), a read timeout 504, anything else 502."""
    error = _failure(failure)
    assert (error.status, error.retryable) == (status, retryable)
    if isinstance(failure, MaxRetryError) and type(failure.reason) is ConnectTimeoutError:
        assert "connect timeout" in error.message
