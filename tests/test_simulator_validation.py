"""The simulator (kimi_backend/moonshot/simulator/validation.py and the model list): which requests
it refuses as Moonshot does, and with which error, over real HTTP on loopback."""
from __future__ import annotations

import pytest
import requests

from kimi_backend.moonshot.models import BY_ID, CURRENT, model_item
from kimi_backend.moonshot.simulator import MODELS, OFFLINE_NOTICE
from tests.simulator_support import AUTH, MODEL, NO_THINKING, chat, simulator_of_its_own


def test_auth_required(simulator_url):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "sk-test"}):
        r = chat(simulator_url, "hi", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": {"message": "Invalid Authentication", "type": "invalid_authentication_error"}}
    assert requests.get(f"{simulator_url}/models", timeout=5).status_code == 401


def test_configured_key_must_match_exactly():
    with simulator_of_its_own(api_key="sk-secret") as server:
        assert chat(server.base_url, "hi").status_code == 401
        assert chat(server.base_url, "hi", headers={"Authorization": "Bearer sk-secret"}).status_code == 200


def test_models_list(simulator_url):
    r = requests.get(f"{simulator_url}/models", headers=AUTH, timeout=5)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list" and data["data"] == MODELS
    assert data["data"] == [model_item(facts) for facts in CURRENT]
    assert set(data["data"][0]) == {"id", "object", "created", "owned_by", "context_length",
                                    "supports_image_in", "supports_video_in", "supports_reasoning"}


def test_retired_models_are_not_found(simulator_url):
    for model in ("moonshot-v1-8k", "kimi-k2.5", "kimi-latest", "kimi-thinking-preview"):
        assert BY_ID[model].retired
        r = chat(simulator_url, "hi", model=model)
        assert r.status_code == 404
        assert r.json()["error"] == {"message": f"Not found the model {model} or Permission denied",
                                     "type": "resource_not_found_error"}


def test_fixed_sampling_is_refused_in_moonshots_words(simulator_url):
    r = chat(simulator_url, "hi", temperature=0.3, thinking={"type": "enabled"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "invalid temperature: only 1 is allowed for this model"
    # k2.6's own value with thinking off, from the model table
    assert BY_ID[MODEL].fixed_without_thinking == {"temperature": 0.6}
    assert chat(simulator_url, "hi", temperature=0.6).status_code == 200
    r = chat(simulator_url, "hi", temperature=1.0)
    assert r.status_code == 400 and r.json()["error"]["message"] == "invalid temperature: only 0.6 is allowed for this model"
    r = chat(simulator_url, "hi", model="kimi-k2.7-code-highspeed", temperature=0.3, thinking=None)
    assert r.status_code == 200  # not on the vendor's fixed-sampling list


def test_thinking_on_off_and_always(simulator_url):
    on = chat(simulator_url, "hi", thinking=None).json()["choices"][0]["message"]
    assert on["reasoning_content"].startswith("Thinking step 1")
    off = chat(simulator_url, "hi").json()["choices"][0]["message"]
    assert "reasoning_content" not in off
    r = chat(simulator_url, "hi", model="kimi-k3")
    assert r.status_code == 400 and "thinking cannot be disabled" in r.json()["error"]["message"]


def test_tool_call_turns_need_their_reasoning_when_thinking(simulator_url):
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "functions.w:0", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "functions.w:0", "name": "w", "content": "sunny"}]
    body = {"model": MODEL, "messages": messages}
    r = requests.post(f"{simulator_url}/chat/completions", json=body, headers=AUTH, timeout=5)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("thinking is enabled but reasoning_content is missing in assistant "
                                            "tool call message at index 1")
    messages[1]["reasoning_content"] = "I should call w."
    assert requests.post(f"{simulator_url}/chat/completions", json=body, headers=AUTH, timeout=5).status_code == 200
    r = chat(simulator_url, "hi", model="kimi-k2.6", tool_choice="required",
             tools=[{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}])
    assert r.status_code == 400 and "tool_choice 'required'" in r.json()["error"]["message"]


def test_models_route_can_be_absent(simulator, simulator_url):
    simulator.serves_models = False
    try:
        assert requests.get(f"{simulator_url}/models", headers=AUTH, timeout=5).status_code == 404
        assert chat(simulator_url, "hi").status_code == 200
    finally:
        simulator.serves_models = True


def test_unknown_model_and_paths(simulator_url):
    r = chat(simulator_url, "hi", model="gpt-4")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Not found the model gpt-4 or Permission denied",
                                  "type": "resource_not_found_error"}}
    r = requests.get(f"{simulator_url}/nowhere", headers=AUTH, timeout=5)
    assert r.status_code == 404 and r.json()["error"]["type"] == "resource_not_found_error"
    r = requests.get(f"{simulator_url}/chat/completions", headers=AUTH, timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST" and "message" in r.json()["error"]


@pytest.mark.parametrize("body, fragment", [
    ([1, 2], "JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model is required"),
    ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, "model is required"),
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": "hi"}, "messages"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": ""}]}, "with role 'user' must not be empty"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]},
     "position 0 with role 'assistant' must not be empty"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
     "text content is empty"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": -0.1}, "top_p"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 6}, "n must be"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": BY_ID[MODEL].context_length - 2},
     f"Your request exceeded model token limit : {BY_ID[MODEL].context_length}"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi sim:nonsense=1"}]}, "sim:nonsense"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi sim:delay=-1"}]}, "sim:delay"),
])
def test_validation_errors(simulator_url, body, fragment):
    r = requests.post(f"{simulator_url}/chat/completions", json=body, headers=AUTH, timeout=5)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


def test_not_json_body(simulator_url):
    r = requests.post(f"{simulator_url}/chat/completions", data=b"{nope", headers=AUTH, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_assistant_tool_call_may_have_empty_content(simulator_url):
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "functions.w:0", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "functions.w:0", "name": "w", "content": "sunny"}]
    r = requests.post(f"{simulator_url}/chat/completions", json={"model": MODEL, "messages": messages, **NO_THINKING},
                      headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} The tool said: sunny"
