"""The OpenAI-compatible surface (`/v1`) driven by the official `openai` Python package against
the service under gunicorn, in front of the simulator over real HTTP. The upstream key never
appears in a response or in the service's log."""
from __future__ import annotations

import json

import openai
import pytest
import requests

from kimi_backend.moonshot.models import CURRENT, DEFAULT_MODEL
from tests.conftest import CLIENT_KEY, UPSTREAM_KEY
from tests.servers import Service

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


@pytest.fixture(scope="module")
def service(simulator_server):
    """The service requiring a client key, in front of the test simulator."""
    service = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url,
                      REQUIRE_API_KEY="true", VALID_API_KEYS=CLIENT_KEY, RATE_LIMIT_MAX_REQUESTS="10000",
                      UPSTREAM_MAX_RETRIES="0")
    yield service
    log = service.log()
    service.stop()
    assert UPSTREAM_KEY not in log + service.log()


@pytest.fixture
def client(service, simulator) -> openai.OpenAI:
    """The official SDK, pointed at our /v1 with a client key as its api_key."""
    return openai.OpenAI(base_url=service.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20)


def sent(simulator) -> dict:
    """What the simulator last received."""
    return simulator.stats()["last_request"]["body"]


def test_chat(client, simulator):
    completion = client.chat.completions.create(model="kimi-k2.6", messages=[{"role": "user", "content": "你好"}])
    assert completion.choices[0].message.content == "[offline simulator] You said: 你好"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "kimi-k2.6"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0
    # Moonshot's reasoning passes through as reasoning_content.
    assert completion.choices[0].message.model_extra["reasoning_content"].startswith("Thinking step 1")
    assert sent(simulator)["messages"] == [{"role": "user", "content": "你好"}]


def test_stream_is_reassembled_with_usage(client, simulator):
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "讲个故事 sim:chunks=12"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[offline simulator] You said: 讲个故事"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 12
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[0].choices[0].finish_reason == "stop"


def test_stream_without_include_usage_still_carries_moonshots_usage_in_the_last_choice(client, simulator):
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 stream=True))
    assert all(c.choices for c in chunks)  # no usage-only chunk the client did not ask for
    assert chunks[-1].choices[0].model_extra["usage"]["total_tokens"] > 0
    assert sent(simulator)["stream_options"] == {"include_usage": True}  # we always count


def test_models(client):
    assert [model.id for model in client.models.list()] == [facts.id for facts in CURRENT]


def test_tool_call_round_trip(client, simulator):
    messages = [{"role": "user", "content": "Weather in Beijing?"}]
    first = client.chat.completions.create(model="kimi-k3", messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id == "functions.get_weather:0" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"query": "Weather in Beijing?"}
    assert sent(simulator)["tools"] == [WEATHER_TOOL]
    # Replay the assistant turn as received (its reasoning included, which K3 requires), then the result.
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "name": "get_weather", "content": "sunny, 25°C"})
    second = client.chat.completions.create(model="kimi-k3", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "[offline simulator] The tool said: sunny, 25°C"
    assert sent(simulator)["messages"][1]["reasoning_content"] == choice.message.model_extra["reasoning_content"]


def test_streamed_tool_call_deltas(client, simulator):
    stream = client.chat.completions.create(model="kimi-k2.6", messages=[{"role": "user", "content": "weather?"}],
                                            tools=[WEATHER_TOOL], stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or ():
            entry = calls.setdefault(delta_call.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = delta_call.id or entry["id"]
            if delta_call.function:
                entry["name"] = delta_call.function.name or entry["name"]
                entry["arguments"] += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {0: {"id": "functions.get_weather:0", "name": "get_weather",
                         "arguments": json.dumps({"query": "weather?"})}}


def test_json_mode(client, simulator):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Reply in JSON"}],
        response_format={"type": "json_object"})
    assert json.loads(completion.choices[0].message.content)["offline"] is True
    assert sent(simulator)["response_format"] == {"type": "json_object"}


def test_partial_mode(client, simulator):
    completion = client.chat.completions.create(model=DEFAULT_MODEL, messages=[
        {"role": "user", "content": "Tell a story"},
        {"role": "assistant", "content": "Once upon a time", "partial": True}])
    assert not completion.choices[0].message.content.startswith("Once upon a time")
    assert sent(simulator)["messages"][-1] == {"role": "assistant", "content": "Once upon a time", "partial": True}


def test_options_and_content_parts_pass_through(client, simulator):
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    client.chat.completions.create(model="kimi-k2.7-code-highspeed", messages=[{"role": "user", "content": parts}],
                                   stop=["\n\n"], temperature=0.3, max_tokens=50,
                                   extra_body={"reasoning_effort": "max", "prompt_cache_key": "abc"})
    body = sent(simulator)
    assert body["messages"][0]["content"] == parts
    assert (body["stop"], body["temperature"], body["reasoning_effort"], body["prompt_cache_key"]) == (
        ["\n\n"], 0.3, "max", "abc")
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body


def test_thinking_in_moonshots_form_through_extra_body(client, simulator):
    completion = client.chat.completions.create(model="kimi-k2.6", messages=[{"role": "user", "content": "hi"}],
                                                extra_body={"thinking": {"type": "disabled"}})
    assert sent(simulator)["thinking"] == {"type": "disabled"}
    assert "reasoning_content" not in (completion.choices[0].message.model_extra or {})


def test_thinking_in_moonshots_form_is_not_sent_to_a_model_that_always_thinks(client, simulator):
    client.chat.completions.create(model="kimi-k2.6", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"thinking": {"type": "enabled", "keep": "all"}})
    assert sent(simulator)["thinking"] == {"type": "enabled", "keep": "all"}
    client.chat.completions.create(model="kimi-k3", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"thinking": {"type": "enabled", "keep": "all"}})
    assert "thinking" not in sent(simulator)


def test_a_retired_model_id_is_answered_through_its_alias(client, simulator):
    completion = client.chat.completions.create(model="moonshot-v1-8k", messages=[{"role": "user", "content": "hi"}])
    assert completion.model == DEFAULT_MODEL
    assert sent(simulator)["model"] == DEFAULT_MODEL


def test_fixed_sampling_parameters_are_dropped_with_the_header(client, simulator):
    raw = client.chat.completions.with_raw_response.create(
        model="kimi-k2.6", messages=[{"role": "user", "content": "hi"}], temperature=0.2, n=1, presence_penalty=0.5)
    assert raw.headers["X-Kimi-Dropped-Params"] == "temperature, n, presence_penalty"
    assert raw.parse().choices[0].message.content
    body = sent(simulator)
    assert not {"temperature", "n", "presence_penalty"} & set(body)


def test_authentication_error(service, simulator):
    wrong = openai.OpenAI(base_url=service.url + "/v1", api_key="not-a-client-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"
    assert simulator.stats()["chat_requests"] == 0


def test_not_found_model(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"


def test_bad_request(client, simulator):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                       temperature=1.5)
    assert raised.value.code == "invalid_request" and "temperature" in raised.value.message
    assert simulator.stats()["chat_requests"] == 0


@pytest.mark.parametrize("model", [DEFAULT_MODEL, "kimi-k2.7-code-highspeed"])  # sampling fixed, and free
@pytest.mark.parametrize("option", [{"presence_penalty": 2.5}, {"frequency_penalty": -3}])
def test_out_of_range_penalties_are_ours_to_refuse(client, simulator, model, option):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], **option)
    assert raised.value.code == "invalid_request" and next(iter(option)) in raised.value.message
    assert simulator.stats()["chat_requests"] == 0


def test_rate_limit_error_carries_retry_after(simulator_server, simulator):
    limited = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url, RATE_LIMIT_MAX_REQUESTS="1")
    try:
        sdk = openai.OpenAI(base_url=limited.url + "/v1", api_key="unused", max_retries=0)
        sdk.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "one"}])
        with pytest.raises(openai.RateLimitError) as raised:
            sdk.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "two"}])
        assert int(raised.value.response.headers["Retry-After"]) > 0
        assert raised.value.code == "rate_limited"
    finally:
        limited.stop()


def test_upstream_rate_limit_is_a_rate_limit_error(client, simulator):
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=DEFAULT_MODEL,
                                       messages=[{"role": "user", "content": "hi sim:status=429 sim:retry_after=3"}])
    assert raised.value.response.headers["Retry-After"] == "3"


def test_an_error_mid_stream_is_raised_by_the_sdk(client, simulator):
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi sim:chunks=6 sim:break_after=2"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk)
    assert "broke" in raised.value.message
    assert any(c.choices and c.choices[0].delta.content for c in received)  # the text before the break arrived


def test_raw_errors_have_openais_shape_and_never_the_key(service, simulator):
    response = requests.post(service.url + "/v1/chat/completions", data="{not json",
                             headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    error = response.json()["error"]
    assert response.status_code == 400 and set(error) >= {"message", "type", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    response = requests.post(service.url + "/v1/chat/completions",
                             json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi sim:status=401"}]},
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_auth_failed"
    assert UPSTREAM_KEY not in response.text
    assert requests.get(service.url + "/v1/nowhere").json()["error"]["code"] == "not_found"


def test_a_browser_preflight_for_the_openai_sdk_is_allowed(service):
    response = requests.options(service.url + "/v1/chat/completions", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os,x-stainless-retry-count"})
    assert response.status_code == 200
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "x-stainless-os" in allowed and "authorization" in allowed


def test_a_browser_token_is_an_api_key_for_the_sdk(simulator_server, simulator):
    from tests.token_support import ADMIN, SECRET

    service = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url, REQUIRE_API_KEY="true",
                      VALID_API_KEYS=CLIENT_KEY, TOKEN_SECRET=SECRET, ADMIN_API_KEY=ADMIN)
    try:
        minted = requests.post(service.url + "/api/tokens", json={"subject": "sdk-user", "origins": ["*"]},
                               headers={"x-admin-key": ADMIN}, timeout=10).json()["data"]
        sdk = openai.OpenAI(base_url=service.url + "/v1", api_key=minted["token"], max_retries=0)
        completion = sdk.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == "[offline simulator] You said: hi"
        requests.delete(service.url + "/api/tokens/sdk-user", headers={"x-admin-key": ADMIN}, timeout=10)
        with pytest.raises(openai.AuthenticationError) as raised:
            sdk.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
        assert raised.value.code == "token_revoked"
        assert minted["token"] not in service.log()
    finally:
        service.stop()
