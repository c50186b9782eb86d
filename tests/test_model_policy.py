"""Kimi as it is today, against the simulator (which serves only the current models, refuses
retired ids with a 404 and fixed sampling values with a 400, like Moonshot): retired ids
answered through aliases, fixed sampling dropped, thinking in Moonshot's form, reasoning
replayed, readiness without a model list, an HTML 504 answered as JSON."""
from __future__ import annotations

import json
import logging

import pytest

from kimi_backend.config import load_settings
from kimi_backend.config.parsers import ConfigError
from kimi_backend.moonshot.models import BY_ID, CURRENT, DEFAULT_MODEL, MODELS, builtin_aliases


def sse_events(data: bytes) -> list:
    """The data payloads of an SSE body (JSON objects, or "[DONE]")."""
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in data.decode().splitlines() if line.startswith("data: ")]


def sent(simulator) -> dict:
    """The body of the last request the simulator received."""
    return simulator.stats()["last_request"]["body"]


# ---------------------------------------------------------------- the table

def test_every_retired_id_has_a_current_replacement():
    current = {facts.id for facts in CURRENT}
    assert DEFAULT_MODEL in current
    aliases = builtin_aliases(DEFAULT_MODEL)
    assert set(aliases) == {facts.id for facts in MODELS if facts.retired}
    assert set(aliases.values()) <= current
    assert aliases["moonshot-v1-8k"] == aliases["kimi-latest"] == aliases["kimi-k2.5"] == DEFAULT_MODEL
    assert BY_ID[aliases["kimi-thinking-preview"]].thinking != "none"


# ---------------------------------------------------------------- the seed's requests, verbatim

@pytest.mark.parametrize("route,body", [
    ("/api/chat/completion", {"message": "你好", "model": "moonshot-v1-8k", "temperature": 0.7}),
    ("/api/chat/history", {"messages": [{"role": "user", "content": "你好"}], "model": "moonshot-v1-32k",
                           "temperature": 0.3}),
])
def test_seed_requests_answer_through_an_alias(client, simulator, route, body):
    response = client.post(route, json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["model"] == DEFAULT_MODEL  # the model that answered
    assert response.headers["X-Kimi-Dropped-Params"] == "temperature"
    upstream = sent(simulator)
    assert upstream["model"] == DEFAULT_MODEL and "temperature" not in upstream


def test_seed_stream_answers_through_an_alias(client, simulator):
    response = client.post("/api/chat/stream", json={"messages": "讲个故事", "model": "moonshot-v1-128k",
                                                     "temperature": 0.5})
    assert response.status_code == 200
    assert response.headers["X-Kimi-Dropped-Params"] == "temperature"
    events = sse_events(response.get_data())
    assert events[-1] == "[DONE]" and events[-2]["finish_reason"] == "stop"
    assert "".join(event["content"] for event in events[:-1]).endswith("讲个故事")
    assert sent(simulator)["model"] == DEFAULT_MODEL


def test_the_access_log_records_requested_and_served_model(client, simulator, caplog):
    with caplog.at_level(logging.INFO, logger="kimi_backend.access"):
        client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-latest"})
    fields = [record.fields for record in caplog.records if hasattr(record, "fields")][-1]
    assert (fields["requested_model"], fields["model"]) == ("kimi-latest", DEFAULT_MODEL)


# ---------------------------------------------------------------- fixed sampling

def test_fixed_sampling_parameters_are_dropped_and_named(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k2.6",
                                                         "temperature": 0.2, "top_p": 0.5, "max_tokens": 32})
    assert response.status_code == 200
    assert response.headers["X-Kimi-Dropped-Params"] == "temperature, top_p"
    upstream = sent(simulator)
    assert "temperature" not in upstream and "top_p" not in upstream
    assert upstream["max_completion_tokens"] == 32 and "max_tokens" not in upstream


def test_no_header_when_nothing_was_dropped(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k2.6"})
    assert response.status_code == 200 and "X-Kimi-Dropped-Params" not in response.headers


def test_out_of_range_values_are_still_ours_to_refuse(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k2.6", "temperature": 3})
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_request"
    assert "temperature" in response.get_json()["error"]
    assert simulator.stats()["chat_requests"] == 0


def test_browser_reads_the_dropped_header_cross_origin(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi", "temperature": 0.2},
                           headers={"Origin": "http://localhost:5173"})
    assert "X-Kimi-Dropped-Params" in response.headers["Access-Control-Expose-Headers"]


# ---------------------------------------------------------------- thinking

def test_thinking_false_reaches_the_upstream_in_moonshots_form(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k2.6", "thinking": False})
    assert response.status_code == 200
    assert sent(simulator)["thinking"] == {"type": "disabled"}
    assert "reasoning" not in response.get_json()["data"]


def test_thinking_defaults_to_the_models_own(client, simulator):
    data = client.post("/api/chat/completion", json={"message": "hi"}).get_json()["data"]
    assert "thinking" not in sent(simulator)
    assert data["reasoning"].startswith("Thinking step 1")


def test_thinking_cannot_be_turned_off_where_the_model_always_thinks(client, simulator):
    response = client.post("/api/chat/stream", json={"messages": "hi", "model": "kimi-k3", "thinking": False})
    assert response.status_code == 400
    assert response.get_json()["code"] == "thinking_required" and "kimi-k3" in response.get_json()["error"]
    assert simulator.stats()["chat_requests"] == 0


def test_default_thinking_off_applies_where_the_model_allows(make_app, simulator):
    client = make_app(DEFAULT_THINKING="off").test_client()
    assert client.post("/api/chat/completion", json={"message": "hi"}).status_code == 200
    assert sent(simulator)["thinking"] == {"type": "disabled"}
    # A model that always thinks is not an error: the service-wide default cannot apply to it.
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k3"})
    assert response.status_code == 200 and "thinking" not in sent(simulator)
    # An explicit choice wins over the default.
    client.post("/api/chat/completion", json={"message": "hi", "thinking": True})
    assert sent(simulator)["thinking"] == {"type": "enabled"}


def test_a_retired_thinking_model_keeps_thinking_under_default_off(make_app, simulator):
    client = make_app(DEFAULT_THINKING="off").test_client()
    data = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-thinking-preview"}).get_json()["data"]
    assert sent(simulator)["thinking"] == {"type": "enabled"}
    assert data["reasoning"]


def test_stream_relays_reasoning_then_content(client, simulator):
    events = sse_events(client.post("/api/chat/stream", json={"messages": "hi sim:reasoning=2"}).get_data())
    reasoning = [event["reasoning"] for event in events[:-1] if event.get("reasoning")]
    assert reasoning == ["Thinking step 1 (offline). ", "Thinking step 2 (offline). "]
    first_content = next(i for i, event in enumerate(events) if event.get("content"))
    assert all(not event.get("reasoning") for event in events[first_content:-1])


# ---------------------------------------------------------------- reasoning replay

@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_is_replayed_as_reasoning_content(client, simulator, field):
    first = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k3"}).get_json()["data"]
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": first["message"], field: first["reasoning"]},
                {"role": "user", "content": "and then?"}]
    response = client.post("/api/chat/history", json={"model": "kimi-k3", "messages": messages})
    assert response.status_code == 200
    assert sent(simulator)["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": first["message"], "reasoning_content": first["reasoning"]},
        {"role": "user", "content": "and then?"}]


def test_stream_replays_reasoning_too(client, simulator):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "reasoning": "greet"},
                {"role": "user", "content": "again"}]
    assert client.post("/api/chat/stream", json={"messages": messages}).status_code == 200
    assert sent(simulator)["messages"][1] == {"role": "assistant", "content": "hello", "reasoning_content": "greet"}


def test_reasoning_on_a_user_message_is_not_forwarded(client, simulator):
    messages = [{"role": "user", "content": "hi", "reasoning": "not mine to send"}]
    assert client.post("/api/chat/history", json={"messages": messages}).status_code == 200
    assert sent(simulator)["messages"] == [{"role": "user", "content": "hi"}]


# ---------------------------------------------------------------- aliases

def test_model_aliases_override_the_builtin_map(make_app, simulator):
    client = make_app(MODEL_ALIASES="moonshot-v1-8k=kimi-k3, gpt-4o=kimi-k2.7-code").test_client()
    assert client.post("/api/chat/completion", json={"message": "hi", "model": "moonshot-v1-8k"}).get_json()["data"]["model"] == "kimi-k3"
    assert client.post("/api/chat/completion", json={"message": "hi", "model": "gpt-4o"}).get_json()["data"]["model"] == "kimi-k2.7-code"
    # Entries not overridden keep their built-in replacement.
    assert client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-latest"}).get_json()["data"]["model"] == DEFAULT_MODEL


def test_an_env_naming_a_retired_default_model_keeps_working(make_app, simulator):
    # The .env.example shipped before the model line changed had DEFAULT_MODEL=moonshot-v1-8k.
    client = make_app(DEFAULT_MODEL="moonshot-v1-8k").test_client()
    for body in ({"message": "hi"}, {"message": "hi", "model": "moonshot-v1-32k"}):
        response = client.post("/api/chat/completion", json=body)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["data"]["model"] == DEFAULT_MODEL
        assert sent(simulator)["model"] == DEFAULT_MODEL
    # What a frontend is told is the default is a model it can pick from the list.
    assert client.get("/api/info").get_json()["data"]["defaultModel"] == DEFAULT_MODEL


def test_an_alias_does_not_apply_to_an_id_the_upstream_serves(make_app, simulator):
    client = make_app(MODEL_ALIASES="kimi-k3=kimi-k2.7-code").test_client()
    data = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k3"}).get_json()["data"]
    assert data["model"] == "kimi-k3"


def test_without_a_model_list_the_table_decides(make_app, simulator):
    simulator.serves_models = False
    client = make_app().test_client()
    data = client.post("/api/chat/completion", json={"message": "hi", "model": "moonshot-v1-8k"}).get_json()["data"]
    assert data["model"] == DEFAULT_MODEL
    models = client.get("/api/chat/models").get_json()
    assert models["source"] == "fallback" and [m["id"] for m in models["data"]] == [f.id for f in CURRENT]


def test_allowed_models_is_checked_against_the_served_id(make_app, simulator):
    client = make_app(ALLOWED_MODELS=DEFAULT_MODEL).test_client()
    assert client.post("/api/chat/completion", json={"message": "hi", "model": "moonshot-v1-8k"}).status_code == 200
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k3"})
    assert response.status_code == 400 and response.get_json()["code"] == "model_not_allowed"


def test_an_allowlist_written_for_the_original_service_still_allows_its_models(make_app, simulator):
    # The original's .env listed moonshot-v1 ids: each now stands for the model that answers it.
    client = make_app(ALLOWED_MODELS="moonshot-v1-8k,moonshot-v1-32k").test_client()
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "moonshot-v1-8k", "temperature": 0.3})
    assert response.status_code == 200, response.get_json()
    assert sent(simulator)["model"] == DEFAULT_MODEL
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k3"})
    assert response.status_code == 400 and response.get_json()["code"] == "model_not_allowed"


def test_an_unknown_id_is_passed_on_and_answered_as_not_found(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi", "model": "gpt-4"})
    assert response.status_code == 400 and response.get_json()["code"] == "model_not_found"
    assert sent(simulator)["model"] == "gpt-4"


@pytest.mark.parametrize("raw", ["moonshot-v1-8k", "=kimi-k3", "a=b,c"])
def test_malformed_model_aliases_stop_startup(raw):
    with pytest.raises(ConfigError, match="MODEL_ALIASES"):
        load_settings({"MODEL_ALIASES": raw, "KIMI_OFFLINE": "1"})


def test_default_thinking_is_validated():
    with pytest.raises(ConfigError, match="DEFAULT_THINKING"):
        load_settings({"DEFAULT_THINKING": "maybe", "KIMI_OFFLINE": "1"})


# ---------------------------------------------------------------- today's upstream: readiness, timeouts, HTML

def test_an_upstream_without_a_model_list_is_ready(make_app, simulator):
    simulator.serves_models = False
    response = make_app().test_client().get("/health/ready")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"]["upstream"] == "ok"


def test_an_upstream_that_refuses_our_key_is_not_ready(make_app, simulator):
    response = make_app(KIMI_API_KEY="sk-wrong-key-for-readiness").test_client().get("/health/ready")
    assert response.status_code == 503 and response.get_json()["checks"]["upstream"] == "upstream_auth_failed"


@pytest.mark.parametrize("route,body", [
    ("/api/chat/completion", {"message": "hi sim:status=504 sim:html"}),
    ("/api/chat/stream", {"messages": "hi sim:status=504 sim:html"}),
])
def test_an_html_504_becomes_a_json_504(client, simulator, route, body):
    response = client.post(route, json=body)
    assert response.status_code == 504
    assert response.mimetype == "application/json"
    payload = response.get_json()
    assert payload["success"] is False and payload["code"] == "upstream_timeout"
    assert "<" not in payload["error"]
    assert simulator.stats()["chat_requests"] == 1  # a gateway timeout is not retried


def test_an_html_502_page_is_not_passed_on(client, simulator):
    response = client.post("/api/chat/completion", json={"message": "hi sim:status=502 sim:html"})
    assert response.status_code == 502 and response.get_json()["code"] == "upstream_error"
    assert "<html" not in response.get_data(as_text=True)


def test_a_non_streamed_call_may_outlast_the_stream_read_timeout(make_app, simulator):
    client = make_app(UPSTREAM_READ_TIMEOUT_S="0.3", UPSTREAM_COMPLETION_TIMEOUT_S="5").test_client()
    response = client.post("/api/chat/completion", json={"message": "slow thinking sim:delay=0.8"})
    assert response.status_code == 200
    # A stream's silence is still bounded by the read timeout.
    response = client.post("/api/chat/stream", json={"messages": "hi sim:first_delay=0.8"})
    assert response.status_code == 200
    assert sse_events(response.get_data())[-2]["code"] == "upstream_timeout"


def test_completion_timeout_bounds_a_silent_non_streamed_call(make_app, simulator):
    client = make_app(UPSTREAM_READ_TIMEOUT_S="0.2", UPSTREAM_COMPLETION_TIMEOUT_S="0.4",
                      UPSTREAM_MAX_RETRIES="0").test_client()
    response = client.post("/api/chat/completion", json={"message": "hi sim:delay=1"})
    assert response.status_code == 504 and response.get_json()["code"] == "upstream_timeout"
