"""Tests for the offline Moonshot simulator, over real HTTP on loopback.

Most tests share one werkzeug-served simulator (start_in_thread); the gevent CLI server runs
as a subprocess for the tests that concern it. Nothing waits on fixed sleeps: state changes
are polled with a deadline.
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from kimi_backend.moonshot.models import BY_ID, CURRENT, DEFAULT_MODEL, model_item
from kimi_backend.moonshot.simulator import MODELS, OFFLINE_NOTICE, start_in_thread

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": "Bearer sk-test"}
MODEL = DEFAULT_MODEL
# Replies without reasoning unless a test asks for it, so chunk counts are the content's.
NO_THINKING = {"thinking": {"type": "disabled"}}


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def sim():
    """One werkzeug-served simulator for the module."""
    server = start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def base(sim):
    """The shared simulator's base URL, with counters and script queue cleared."""
    sim.simulator.reset()
    return sim.base_url


def wait_for(predicate, timeout=5.0, interval=0.02):
    """Polls predicate until it is true or the deadline passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def chat(base, content, *, headers=AUTH, timeout=10, **fields):
    """POSTs a one-message chat request."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **NO_THINKING, **fields}
    return requests.post(f"{base}/chat/completions", json=body, headers=headers, timeout=timeout)


def read_stream(base, content, timeout=10, **fields):
    """Streams a chat request; returns (response, raw events as bytes, transport error or None)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True, **NO_THINKING,
            **fields}
    response = requests.post(f"{base}/chat/completions", json=body, headers=AUTH, stream=True, timeout=timeout)
    raw, error = b"", None
    try:
        for piece in response.iter_content(chunk_size=None):
            raw += piece
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as exc:
        error = exc
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), events
    return response, [e[len(b"data: "):] for e in events], error


def parse(events):
    """JSON chunks of a stream (everything but [DONE])."""
    return [json.loads(e) for e in events if e != b"[DONE]"]


def content_of(chunks, field="content"):
    """The concatenated delta text of one field."""
    return "".join(c["choices"][0]["delta"].get(field, "") for c in chunks if c["choices"])


def open_then_hang_up(host, port, content, events_to_read=2):
    """Starts a stream on a raw socket, reads a few events, then closes the socket mid-stream."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True,
                       **NO_THINKING}).encode()
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer sk-test\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while received.count(b"data: ") < events_to_read:
            piece = sock.recv(4096)
            assert piece, "server closed before the expected events"
            received += piece


# ---------------------------------------------------------------- auth, models, validation

def test_auth_required(base):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "sk-test"}):
        r = chat(base, "hi", headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": {"message": "Invalid Authentication", "type": "invalid_authentication_error"}}
    assert requests.get(f"{base}/models", timeout=5).status_code == 401


def test_configured_key_must_match_exactly():
    server = start_in_thread(api_key="sk-secret")
    try:
        assert chat(server.base_url, "hi").status_code == 401
        assert chat(server.base_url, "hi", headers={"Authorization": "Bearer sk-secret"}).status_code == 200
    finally:
        server.stop()


def test_models_list(base):
    r = requests.get(f"{base}/models", headers=AUTH, timeout=5)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list" and data["data"] == MODELS
    assert data["data"] == [model_item(facts) for facts in CURRENT]
    assert set(data["data"][0]) == {"id", "object", "created", "owned_by", "context_length",
                                    "supports_image_in", "supports_video_in", "supports_reasoning"}


def test_retired_models_are_not_found(base):
    for model in ("moonshot-v1-8k", "kimi-k2.5", "kimi-latest", "kimi-thinking-preview"):
        assert BY_ID[model].retired
        r = chat(base, "hi", model=model)
        assert r.status_code == 404
        assert r.json()["error"] == {"message": f"Not found the model {model} or Permission denied",
                                     "type": "resource_not_found_error"}


def test_fixed_sampling_is_refused_in_moonshots_words(base):
    r = chat(base, "hi", temperature=0.3, thinking={"type": "enabled"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "invalid temperature: only 1 is allowed for this model"
    assert chat(base, "hi", temperature=0.6).status_code == 200  # k2.6's own value with thinking off
    r = chat(base, "hi", model="kimi-k2.7-code-highspeed", temperature=0.3, thinking=None)
    assert r.status_code == 200  # not on the vendor's fixed-sampling list


def test_thinking_on_off_and_always(base):
    on = chat(base, "hi", thinking=None).json()["choices"][0]["message"]
    assert on["reasoning_content"].startswith("Thinking step 1")
    off = chat(base, "hi").json()["choices"][0]["message"]
    assert "reasoning_content" not in off
    r = chat(base, "hi", model="kimi-k3")
    assert r.status_code == 400 and "thinking cannot be disabled" in r.json()["error"]["message"]


def test_tool_call_turns_need_their_reasoning_when_thinking(base):
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "functions.w:0", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "functions.w:0", "name": "w", "content": "sunny"}]
    body = {"model": MODEL, "messages": messages}
    r = requests.post(f"{base}/chat/completions", json=body, headers=AUTH, timeout=5)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("thinking is enabled but reasoning_content is missing in assistant "
                                            "tool call message at index 1")
    messages[1]["reasoning_content"] = "I should call w."
    assert requests.post(f"{base}/chat/completions", json=body, headers=AUTH, timeout=5).status_code == 200
    r = chat(base, "hi", model="kimi-k2.6", tool_choice="required",
             tools=[{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}])
    assert r.status_code == 400 and "tool_choice 'required'" in r.json()["error"]["message"]


def test_models_route_can_be_absent(sim, base):
    sim.simulator.serves_models = False
    try:
        assert requests.get(f"{base}/models", headers=AUTH, timeout=5).status_code == 404
        assert chat(base, "hi").status_code == 200
    finally:
        sim.simulator.serves_models = True


def test_unknown_model_and_paths(base):
    r = chat(base, "hi", model="gpt-4")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Not found the model gpt-4 or Permission denied",
                                  "type": "resource_not_found_error"}}
    r = requests.get(f"{base}/nowhere", headers=AUTH, timeout=5)
    assert r.status_code == 404 and r.json()["error"]["type"] == "resource_not_found_error"
    r = requests.get(f"{base}/chat/completions", headers=AUTH, timeout=5)
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
def test_validation_errors(base, body, fragment):
    r = requests.post(f"{base}/chat/completions", json=body, headers=AUTH, timeout=5)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


def test_not_json_body(base):
    r = requests.post(f"{base}/chat/completions", data=b"{nope", headers=AUTH, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_assistant_tool_call_may_have_empty_content(base):
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "functions.w:0", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "functions.w:0", "name": "w", "content": "sunny"}]
    r = requests.post(f"{base}/chat/completions", json={"model": MODEL, "messages": messages, **NO_THINKING},
                      headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} The tool said: sunny"


# ---------------------------------------------------------------- non-stream

def test_non_stream_shape_and_usage(base):
    messages = [{"role": "system", "content": "Be brief, please."}, {"role": "user", "content": "Hello there sim:cached=2"}]
    r = requests.post(f"{base}/chat/completions", json={"model": MODEL, "messages": messages, **NO_THINKING},
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


def test_no_cached_tokens_unless_positive_and_echo_truncated(base):
    data = chat(base, "x" * 500).json()
    assert "cached_tokens" not in data["usage"]
    assert data["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} You said: " + "x" * 200


def test_directives_in_content_parts(base):
    content = [{"type": "text", "text": "Describe sim:reply=A_picture"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    data = chat(base, content).json()
    assert data["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} A picture"


def test_last_request_recorded_with_auth_hidden(sim, base):
    chat(base, "hello")
    requests.get(f"{base.removesuffix('/v1')}/_sim/stats", timeout=5)  # control calls are not recorded
    last = sim.simulator.stats()["last_request"]
    assert last["path"] == "/v1/chat/completions"
    assert last["body"]["messages"][0]["content"] == "hello"
    assert last["headers"]["Authorization"] == "***"


# ---------------------------------------------------------------- streams

def test_stream_framing(base):
    response, events, error = read_stream(base, "Stream me sim:chunks=4")
    assert error is None and response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert events[-1] == b"[DONE]"
    chunks = parse(events)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    middle = chunks[1:-1]
    assert len(middle) == 4 and all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)
    assert all(c["choices"][0]["finish_reason"] is None and "usage" not in c for c in chunks[:-1])
    assert content_of(chunks) == f"{OFFLINE_NOTICE} You said: Stream me"
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == "stop"
    assert set(last["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert "usage" not in chunks[-1]


def test_stream_include_usage_adds_top_level_chunk(base):
    _, events, _ = read_stream(base, "hi", stream_options={"include_usage": True})
    chunks = parse(events)
    assert events[-1] == b"[DONE]"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == chunks[-2]["choices"][0]["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_top_usage_only(base):
    _, events, _ = read_stream(base, "hi sim:top_usage")
    chunks = parse(events)
    assert "usage" not in chunks[-2]["choices"][0] and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_stream_reasoning_comes_first(base):
    _, events, _ = read_stream(base, "think sim:reasoning=3 sim:chunks=2")
    deltas = [c["choices"][0]["delta"] for c in parse(events)[1:-1]]
    assert [list(d) for d in deltas] == [["reasoning_content"]] * 3 + [["content"]] * 2
    assert content_of(parse(events), "reasoning_content").startswith("Thinking step 1")


def test_multibyte_reply_is_valid_utf8_per_chunk(base):
    text = "你好，世界！こんにちは🌏"
    _, events, _ = read_stream(base, f"sim:reply={text} sim:chunks=7 sim:repeat=2")
    for event in events:
        event.decode("utf-8")  # strict: every event stands alone as UTF-8
    chunks = parse(events)
    assert len(chunks) == 1 + 7 + 1
    assert content_of(chunks) == f"{OFFLINE_NOTICE} {text} {text}"


def test_stream_timing_directives(base):
    started = time.monotonic()
    _, events, _ = read_stream(base, "hi sim:chunks=4 sim:duration=0.4 sim:first_delay=0.2")
    assert time.monotonic() - started >= 0.55 and events[-1] == b"[DONE]"


def test_delay_before_headers(base):
    started = time.monotonic()
    assert chat(base, "hi sim:delay=0.3").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_malformed_after(base):
    _, events, error = read_stream(base, "hi sim:chunks=4 sim:malformed_after=2")
    assert error is None and events[-1] == b"[DONE]"
    assert events[3] == b"{not json"
    assert content_of(parse(events[:3] + events[4:])) == f"{OFFLINE_NOTICE} You said: hi"


def test_no_done(base):
    _, events, error = read_stream(base, "hi sim:no_done")
    assert error is None and b"[DONE]" not in events
    assert json.loads(events[-1])["choices"][0]["finish_reason"] == "stop"


def test_break_after_cuts_connection(base):
    _, events, error = read_stream(base, "hi sim:chunks=5 sim:break_after=2")
    assert isinstance(error, requests.exceptions.ChunkedEncodingError)
    assert b"[DONE]" not in events and len(events) == 1 + 2


def test_client_abort_is_counted(sim, base):
    host, port = base.split("//")[1].split("/")[0].split(":")
    # A 10-second stream, so it cannot end on its own before the wait below does.
    open_then_hang_up(host, int(port), "hi sim:reply=word sim:repeat=300 sim:chunks=200 sim:interval=0.05")
    stats = wait_for(lambda: (s := sim.simulator.stats())["streams_aborted"] == 1 and s)
    assert stats, sim.simulator.stats()
    assert stats["streams_started"] == 1 and stats["streams_completed"] == 0 and stats["open_streams"] == 0


# ---------------------------------------------------------------- errors and scripts

def test_error_directives(base):
    r = chat(base, "hi sim:status=429 sim:retry_after=2")
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert r.json() == {"error": {"type": "rate_limit_reached_error", "message":
                        "Your account org-sim<ak-sim> request reached organization max RPM: 3, "
                        "please try again after 2 seconds"}}
    r = chat(base, "hi sim:status=429 sim:type=exceeded_current_quota_error")
    assert r.json()["error"]["message"].startswith("Your account is suspended due to insufficient balance")
    assert "Retry-After" not in r.headers
    r = chat(base, "hi sim:status=503 sim:message=Try_again_soon")
    assert r.status_code == 503 and r.json()["error"] == {"message": "Try again soon", "type": "server_error"}
    r = chat(base, "hi sim:status=400 sim:type=content_filter", stream=True)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "The request was rejected because it was considered high risk"


def test_script_queue_in_order(sim, base):
    sim.simulator.script([{"status": 503, "type": "server_error", "retry_after": 1}, {"status": 429}])
    r = requests.post(f"{base.removesuffix('/v1')}/_sim/script", json={"responses": [{}, {"reply": "third"}]}, timeout=5)
    assert r.status_code == 200
    first, second, third, fourth = (chat(base, "hi sim:reply=ignored") for _ in range(4))
    assert (first.status_code, first.headers["Retry-After"]) == (503, "1")
    assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_reached_error"
    assert third.json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} You said: hi"
    assert fourth.json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} third"
    assert chat(base, "hi sim:reply=own").json()["choices"][0]["message"]["content"] == f"{OFFLINE_NOTICE} own"
    bad = requests.post(f"{base.removesuffix('/v1')}/_sim/script", json={"responses": [{"status": 200}]}, timeout=5)
    assert bad.status_code == 400


def test_stats_endpoint_and_reset(base):
    chat(base, "hi")
    read_stream(base, "hi")
    root = base.removesuffix("/v1")
    stats = wait_for(lambda: (s := requests.get(f"{root}/_sim/stats", timeout=5).json())["streams_completed"] and s)
    assert stats["chat_requests"] == 2 and stats["stream_requests"] == 1 and stats["streams_started"] == 1
    assert requests.post(f"{root}/_sim/reset", timeout=5).status_code == 200
    assert requests.get(f"{root}/_sim/stats", timeout=5).json()["chat_requests"] == 0


def test_hang_triggers_client_read_timeout(base):
    with pytest.raises(requests.exceptions.ReadTimeout):
        chat(base, "hi sim:hang", timeout=(2, 0.3))


# ---------------------------------------------------------------- gevent: CLI server and monkey-patched thread

def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gevent_sim():
    """`python -m kimi_backend.moonshot.simulator` in a subprocess; yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kimi_backend.moonshot.simulator", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == f"simulator listening on http://127.0.0.1:{port}/v1", (line, proc.poll())
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gevent_stats(url, reset=False):
    """Reads (or resets) the subprocess simulator's counters."""
    root = url.removesuffix("/v1")
    if reset:
        requests.post(f"{root}/_sim/reset", timeout=5)
    return requests.get(f"{root}/_sim/stats", timeout=5).json()


def test_gevent_server_streams_and_holds_concurrency(gevent_sim):
    _, events, error = read_stream(gevent_sim, "hello sim:chunks=3")
    assert error is None and events[-1] == b"[DONE]"
    assert content_of(parse(events)) == f"{OFFLINE_NOTICE} You said: hello"

    gevent_stats(gevent_sim, reset=True)

    def one(i):
        _, got, err = read_stream(gevent_sim, f"n{i} sim:chunks=4 sim:duration=1", timeout=(5, 10))
        return err is None and got[-1] == b"[DONE]"

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results)
    assert time.monotonic() - started < 8  # concurrent: 200 one-second streams, far from 200 s
    stats = wait_for(lambda: (s := gevent_stats(gevent_sim))["streams_completed"] == 200 and s)
    assert stats and stats["open_streams"] == 0


def test_gevent_break_after_and_abort(gevent_sim):
    _, events, error = read_stream(gevent_sim, "hi sim:chunks=5 sim:break_after=1")
    assert isinstance(error, requests.exceptions.ChunkedEncodingError)
    assert b"[DONE]" not in events and len(events) == 1 + 1

    gevent_stats(gevent_sim, reset=True)
    open_then_hang_up("127.0.0.1", int(gevent_sim.split(":")[-1].split("/")[0]), "hi sim:chunks=50 sim:interval=0.05")
    assert wait_for(lambda: gevent_stats(gevent_sim)["streams_aborted"] == 1), gevent_stats(gevent_sim)


def test_start_in_thread_under_gevent_monkey_patching():
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import requests\n"
        "from kimi_backend.moonshot.simulator import start_in_thread\n"
        "server = start_in_thread()\n"
        f"body = {{'model': {MODEL!r}, 'stream': True, 'messages': [{{'role': 'user', 'content': 'hi'}}]}}\n"
        "r = requests.post(server.base_url + '/chat/completions', json=body,\n"
        "                  headers={'Authorization': 'Bearer sk-x'}, timeout=10)\n"
        "assert r.content.endswith(b'data: [DONE]\\n\\n'), r.content\n"
        "server.stop()\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
