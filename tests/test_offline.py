"""Offline mode end to end: no key in development → the built-in simulator, through the
same client code path, clearly labelled, started the way the README starts the service."""
from __future__ import annotations

import json

import pytest
import requests

from kimi_backend.moonshot.models import DEFAULT_MODEL
from tests.servers import Service


@pytest.fixture(scope="module")
def offline_service():
    service = Service()
    yield service
    service.stop()


def test_health_and_info_report_offline(offline_service):
    assert requests.get(offline_service.url + "/health", timeout=5).json()["upstream"] == "offline"
    info = requests.get(offline_service.url + "/api/info", timeout=5).json()["data"]
    assert info["upstream"] == {"mode": "offline"}
    assert DEFAULT_MODEL in info["models"]


def test_offline_chat_history_stream_models(offline_service):
    url = offline_service.url
    reply = requests.post(url + "/api/chat/completion", json={"message": "你好"}, timeout=10).json()
    assert reply["success"] and reply["data"]["message"].startswith("[offline simulator]")
    history = requests.post(url + "/api/chat/history", timeout=10,
                            json={"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                               {"role": "user", "content": "c"}]}).json()
    assert history["data"]["message"] == "[offline simulator] You said: c"
    with requests.post(url + "/api/chat/stream", json={"messages": "写一个故事"}, stream=True, timeout=10) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith(b"data: ")]
    assert lines[-1] == b"data: [DONE]"
    text = "".join(json.loads(line[6:])["content"] for line in lines[:-1])
    assert text == "[offline simulator] You said: 写一个故事"
    models = requests.get(url + "/api/chat/models", timeout=10).json()
    assert models["source"] == "upstream" and any(m["id"] == "kimi-k3" for m in models["data"])


def test_offline_errors_are_json(offline_service):
    response = requests.get(offline_service.url + "/nope", timeout=5)
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    response = requests.post(offline_service.url + "/api/chat/completion", data="{", timeout=5,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
