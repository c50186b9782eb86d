"""The simulator's replies (kimi_backend/moonshot/simulator/replies.py, errors.py, app.py): the
non-stream shape and usage, error directives, the script queue and the control routes."""
from __future__ import annotations

import pytest
import requests

from kimi_backend.moonshot.simulator import OFFLINE_NOTICE
from tests.helpers import wait_until
from tests.simulator_support import AUTH, MODEL, NO_THINKING, chat, read_stream, simulator_of_its_own


def test_non_stream_shape_and_usage(simulator_url):
    messages = [{"role": "system", "content": "Be brief, please."}, {"role": "user", "content": "Hello there sim:cached=2"}]
    r = requests.post(f"{simulator_url}/chat/completions", json={"model": MODEL, "messages": messages, **NO_THINKING},
                      headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert len(r.headers["Msh-Request-Id"]) == 36
    data = r.json()
    assert data["id"].startswith("chatcmpl-") and len(data["id"]) == len("chatcmpl-") + 24
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    assert isinstance(data["created"], int)
    reply = f"{OFFLINE_NOTICE} You said: Hello there"
    assert data["choices"] == [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]
    prompt = (len("Be brief, please.") // 4 + 3) + (len("Hello there sim:cached=2") // 4 + 3)
    completion = len(reply) // 4
    assert data["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion, "cached_tokens": 2}


def test_no_cached_tokens_unless_positive_and_echo_truncated(simulator_url):
    data = chat(simulator_url, "x" * 500).json()
    assert "cached_tokens" not in data["usage"]
    assert data["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} You said: " + "x" * 200


def test_directives_in_content_parts(simulator_url):
    content = [{"type": "text", "text": "Describe sim:reply=A_picture"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    data = chat(simulator_url, content).json()
    assert data["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} A picture"


def test_last_request_recorded_with_auth_hidden(simulator, simulator_url):
    chat(simulator_url, "hello")
    requests.get(f"{simulator_url.removesuffix('/v1')}/_sim/stats", timeout=5)  # control calls are not recorded
    last = simulator.stats()["last_request"]
    assert last["path"] == "/v1/chat/completions"
    assert last["body"]["messages"][0]["content"] == "hello"
    assert last["headers"]["Authorization"] == "***"


def test_error_directives(simulator_url):
    r = chat(simulator_url, "hi sim:status=429 sim:retry_after=2")
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert r.json() == {"error": {"type": "rate_limit_reached_error", "message":
                        "Your account org-sim<ak-sim> request reached organization max RPM: 3, "
                        "please try again after 2 seconds"}}
    r = chat(simulator_url, "hi sim:status=429 sim:type=exceeded_current_quota_error")
    assert r.json()["error"]["message"].startswith("Your account is suspended due to insufficient balance")
    assert "Retry-After" not in r.headers
    r = chat(simulator_url, "hi sim:status=503 sim:message=Try_again_soon")
    assert r.status_code == 503 and r.json()["error"] == {"message": "Try again soon", "type": "server_error"}
    r = chat(simulator_url, "hi sim:status=400 sim:type=content_filter", stream=True)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "The request was rejected because it was considered high risk"


def test_script_queue_in_order(simulator, simulator_url):
    simulator.script([{"status": 503, "type": "server_error", "retry_after": 1}, {"status": 429}])
    r = requests.post(f"{simulator_url.removesuffix('/v1')}/_sim/script", json={"responses": [{}, {"reply": "third"}]}, timeout=5)
    assert r.status_code == 200
    first, second, third, fourth = (chat(simulator_url, "hi sim:reply=ignored") for _ in range(4))
    assert (first.status_code, first.headers["Retry-After"]) == (503, "1")
    assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_reached_error"
    assert third.json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} You said: hi"
    assert fourth.json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} third"
    assert chat(simulator_url, "hi sim:reply=own").json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} own"
    bad = requests.post(f"{simulator_url.removesuffix('/v1')}/_sim/script", json={"responses": [{"status": 200}]}, timeout=5)
    assert bad.status_code == 400


def test_stats_endpoint_and_reset(simulator_url):
    chat(simulator_url, "hi")
    read_stream(simulator_url, "hi")
    root = simulator_url.removesuffix("/v1")
    stats = wait_until(lambda: (s := requests.get(f"{root}/_sim/stats", timeout=5).json())["streams_completed"] and s,
                       timeout=5, message="the stream to be counted as completed")
    assert stats["chat_requests"] == 2 and stats["stream_requests"] == 1 and stats["streams_started"] == 1
    assert requests.post(f"{root}/_sim/reset", timeout=5).status_code == 200
    assert requests.get(f"{root}/_sim/stats", timeout=5).json()["chat_requests"] == 0


def test_hang_triggers_client_read_timeout():
    # A simulator of its own: a hung request stays in flight until its server stops (or five
    # minutes pass), and later tests read the session simulator's in_flight gauge.
    with simulator_of_its_own() as server:
        with pytest.raises(requests.exceptions.ReadTimeout):
            chat(server.base_url, "hi sim:hang", timeout=(2, 0.3))
