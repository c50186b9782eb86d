"""The original contract's chat routes, against the simulator over real HTTP."""
from __future__ import annotations

import json

import pytest

from kimi_backend.moonshot.models import CURRENT, DEFAULT_MODEL


def sse_events(data: bytes) -> list:
    """Parses an SSE body into its data payloads (JSON objects, or the string "[DONE]")."""
    events = []
    for block in data.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_completion_success_shape(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "你好"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["success"] is True
    data = body["data"]
    assert data["message"] == "[offline simulator] You said: 你好"
    assert set(data["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    assert data["model"] == DEFAULT_MODEL
    assert response.headers["X-Request-ID"]


def test_completion_passes_options_and_system_prompt(client, simulator):
    response = client.post("/api/chat/completion", json={
        "message": "hi", "system": "be brief", "model": "kimi-k2.7-code-highspeed",
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 64})
    assert response.status_code == 200
    assert response.get_json()["data"]["model"] == "kimi-k2.7-code-highspeed"
    assert "X-Kimi-Dropped-Params" not in response.headers  # this model's sampling is free
    sent = simulator.stats()["last_request"]["body"]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (sent["temperature"], sent["top_p"], sent["max_completion_tokens"]) == (0.3, 0.9, 64)
    assert "max_tokens" not in sent


def test_history_success_shape(client, simulator):
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "第一句"},
                {"role": "assistant", "content": "好的"}, {"role": "user", "content": "第二句"}]
    response = client.post("/api/chat/history", json={"messages": messages})
    assert response.status_code == 200
    assert response.get_json()["data"]["message"].endswith("第二句")
    assert simulator.stats()["last_request"]["body"]["messages"] == messages


@pytest.mark.parametrize("messages", ["讲个故事", [{"role": "user", "content": "讲个故事"}]])
def test_stream_success(client, simulator, messages):
    response = client.post("/api/chat/stream", json={"messages": messages})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    events = sse_events(response.get_data())
    text = "".join(e["content"] for e in events[:-2])
    assert text == "[offline simulator] You said: 讲个故事"
    final = events[-2]
    assert final["content"] == "" and final["finish_reason"] == "stop"
    assert final["usage"]["total_tokens"] > 0
    assert events[-1] == "[DONE]"


def test_models_from_upstream(client, simulator):
    body = client.get("/api/chat/models").get_json()
    assert body["success"] is True and body["source"] == "upstream"
    assert [model["id"] for model in body["data"]] == [facts.id for facts in CURRENT]
    assert all("context_length" in model for model in body["data"])
    by_id = {model["id"]: model for model in body["data"]}
    assert by_id["kimi-k2.6"]["thinking"] == "optional" and by_id["kimi-k3"]["thinking"] == "always"


def test_models_are_cached(client, simulator):
    client.get("/api/chat/models")
    client.get("/api/chat/models")
    assert simulator.stats()["models_requests"] == 1


def test_models_fall_back_when_upstream_is_down(make_app):
    app = make_app(KIMI_BASE_URL="http://127.0.0.1:9/v1", UPSTREAM_MAX_RETRIES="0")
    body = app.test_client().get("/api/chat/models").get_json()
    assert body["source"] == "fallback"
    by_id = {model["id"]: model for model in body["data"]}
    assert list(by_id) == [facts.id for facts in CURRENT]
    assert by_id["kimi-k3"]["context_length"] == 1_048_576
    assert by_id["kimi-k2.6"]["context_length"] == 262_144


def test_allowed_models_filter_and_refuse(make_app, simulator):
    client = make_app(ALLOWED_MODELS="kimi-k2.6,kimi-k2.7-code").test_client()
    ids = [model["id"] for model in client.get("/api/chat/models").get_json()["data"]]
    assert sorted(ids) == ["kimi-k2.6", "kimi-k2.7-code"]
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k3"})
    assert response.status_code == 400
    assert response.get_json()["code"] == "model_not_allowed"
    assert "kimi-k3" in response.get_json()["error"]
    assert simulator.stats()["chat_requests"] == 0


def test_default_model_setting(make_app, simulator):
    client = make_app(DEFAULT_MODEL="kimi-k2.7-code").test_client()
    assert client.post("/api/chat/completion", json={"message": "hi"}).get_json()["data"]["model"] == "kimi-k2.7-code"


def test_health(client):
    body = client.get("/health").get_json()
    assert body["success"] is True
    assert body["message"] == "Kimi API Backend is running"
    assert body["timestamp"].endswith("Z")
    assert body["version"] == "1.0.0"
    assert body["upstream"] == "live"


def test_info(client, simulator):
    data = client.get("/api/info").get_json()["data"]
    assert data["name"] and data["version"] == "1.0.0"
    paths = {(e["method"], e["path"]) for e in data["endpoints"]}
    assert ("POST", "/api/chat/stream") in paths and ("GET", "/api/chat/models") in paths
    assert data["models"] == [facts.id for facts in CURRENT]
    assert data["defaultModel"] == DEFAULT_MODEL and data["defaultThinking"] == "model"
    assert data["auth"] == {"required": False, "headers": ["x-api-key", "Authorization: Bearer <key>"],
                            "tokens": False, "anonymousSessions": False}
    assert data["rateLimit"] == {"windowMs": 900000, "maxRequests": 10000}
    assert data["upstream"] == {"mode": "live"}
