"""Bad input gets a clear JSON answer with the right status, from every layer."""
from __future__ import annotations

import pytest

from kimi_backend.schemas import MAX_MESSAGES
from tests.helpers import assert_error

BAD_BODIES = [
    # (route, body, field named in the message)
    ("/api/chat/completion", {}, "message"),
    ("/api/chat/completion", {"message": ""}, "message"),
    ("/api/chat/completion", {"message": "   "}, "message"),
    ("/api/chat/completion", {"message": 42}, "message"),
    ("/api/chat/completion", {"message": None}, "message"),
    ("/api/chat/completion", {"message": "hi", "temperature": 1.5}, "temperature"),
    ("/api/chat/completion", {"message": "hi", "temperature": -0.1}, "temperature"),
    ("/api/chat/completion", {"message": "hi", "temperature": "0.5"}, "temperature"),
    ("/api/chat/completion", {"message": "hi", "top_p": 2}, "top_p"),
    ("/api/chat/completion", {"message": "hi", "max_tokens": 0}, "max_tokens"),
    ("/api/chat/completion", {"message": "hi", "max_tokens": 1.5}, "max_tokens"),
    ("/api/chat/completion", {"message": "hi", "model": ""}, "model"),
    ("/api/chat/completion", {"message": "hi", "model": 7}, "model"),
    ("/api/chat/history", {}, "messages"),
    ("/api/chat/history", {"messages": "hello"}, "messages"),
    ("/api/chat/history", {"messages": []}, "messages"),
    ("/api/chat/history", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ("/api/chat/history", {"messages": [{"role": "user"}]}, "messages.0.content"),
    ("/api/chat/history", {"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
    ("/api/chat/history", {"messages": [{"role": "user", "content": "a"}, "b"]}, "messages.1"),
    ("/api/chat/stream", {}, "messages"),
    ("/api/chat/stream", {"messages": ""}, "messages"),
    ("/api/chat/stream", {"messages": []}, "messages"),
    ("/api/chat/stream", {"messages": 5}, "messages"),
    ("/api/chat/stream", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ("/api/chat/stream", {"messages": "hi", "temperature": 3}, "temperature"),
]


@pytest.mark.parametrize("route,body,field", BAD_BODIES)
def test_invalid_fields_name_the_field(client, simulator, route, body, field):
    response = client.post(route, json=body)
    error = assert_error(response, 400, "invalid_request")
    assert f"'{field}'" in error["error"]
    assert simulator.stats()["chat_requests"] == 0


@pytest.mark.parametrize("route", ["/api/chat/completion", "/api/chat/history", "/api/chat/stream"])
@pytest.mark.parametrize("raw,code", [(b"{not json", "invalid_json"), (b"", "invalid_json"),
                                      (b"[1, 2]", "invalid_body"), (b'"text"', "invalid_body"), (b"null", "invalid_body")])
def test_non_json_or_non_object_body(client, route, raw, code):
    response = client.post(route, data=raw, content_type="application/json")
    assert_error(response, 400, code)


@pytest.mark.parametrize("route", ["/api/chat/history", "/api/chat/stream", "/v1/chat/completions"])
def test_every_route_takes_at_most_max_messages_turns(client, simulator, route):
    """One cap on the turns of a conversation, the same on every chat route (and in the API
    document): MAX_MESSAGES pass, one more is refused before any upstream call."""
    turns = [{"role": "user", "content": "hi"}]
    response = client.post(route, json={"messages": turns * (MAX_MESSAGES + 1)})
    assert response.status_code == 400
    body = response.get_json()
    code = body["error"]["code"] if isinstance(body["error"], dict) else body["code"]
    assert code == "invalid_request" and "'messages'" in str(body["error"])
    assert simulator.stats()["chat_requests"] == 0
    assert client.post(route, json={"messages": turns * MAX_MESSAGES}).status_code == 200
    assert simulator.stats()["chat_requests"] == 1


def test_oversize_body_is_413(make_app):
    client = make_app(MAX_BODY_BYTES="2048").test_client()
    response = client.post("/api/chat/completion", json={"message": "x" * 5000})
    body = assert_error(response, 413, "payload_too_large")
    assert "2048" in body["error"]


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/api/nope"), 404, "not_found")
    assert_error(client.get("/definitely/not/here"), 404, "not_found")


def test_wrong_method_is_json_405_with_allow(client):
    response = client.get("/api/chat/completion")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_unexpected_exception_is_generic_500_and_logged(app, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    response = app.test_client().get("/boom", headers={"X-Request-ID": "req-boom-1"})
    body = assert_error(response, 500, "internal_error")
    assert "secret internal detail" not in body["error"]
    assert body["request_id"] == "req-boom-1"
    assert any("req-boom-1" in record.getMessage() for record in caplog.records)


def test_insane_request_id_is_replaced(client):
    response = client.get("/health", headers={"X-Request-ID": "bad id with spaces <script>"})
    assert response.headers["X-Request-ID"] != "bad id with spaces <script>"
    assert len(response.headers["X-Request-ID"]) == 32
