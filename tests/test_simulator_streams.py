"""The simulator's streams (kimi_backend/moonshot/simulator/streams.py, wire.py): SSE framing,
usage placement, timing, and the broken streams the fault directives ask for."""
from __future__ import annotations

import json
import time

import requests

from kimi_backend.moonshot.simulator import OFFLINE_NOTICE
from tests.helpers import wait_until
from tests.simulator_support import MODEL, chat, content_of, open_then_hang_up, parse, read_stream, simulator_of_its_own


def test_stream_framing(simulator_url):
    response, events, error = read_stream(simulator_url, "Stream me sim:chunks=4")
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


def test_stream_include_usage_adds_top_level_chunk(simulator_url):
    _, events, _ = read_stream(simulator_url, "hi", stream_options={"include_usage": True})
    chunks = parse(events)
    assert events[-1] == b"[DONE]"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == chunks[-2]["choices"][0]["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_top_usage_only(simulator_url):
    _, events, _ = read_stream(simulator_url, "hi sim:top_usage")
    chunks = parse(events)
    assert "usage" not in chunks[-2]["choices"][0] and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_stream_reasoning_comes_first(simulator_url):
    _, events, _ = read_stream(simulator_url, "think sim:reasoning=3 sim:chunks=2")
    deltas = [c["choices"][0]["delta"] for c in parse(events)[1:-1]]
    assert [list(d) for d in deltas] == [["reasoning_content"]] * 3 + [["content"]] * 2
    assert content_of(parse(events), "reasoning_content").startswith("Thinking step 1")


def test_multibyte_reply_is_valid_utf8_per_chunk(simulator_url):
    text = "你好，世界！こんにちは🌏"
    _, events, _ = read_stream(simulator_url, f"sim:reply={text} sim:chunks=7 sim:repeat=2")
    for event in events:
        event.decode("utf-8")  # strict: every event stands alone as UTF-8
    chunks = parse(events)
    assert len(chunks) == 1 + 7 + 1
    assert content_of(chunks) == f"{OFFLINE_NOTICE} {text} {text}"


def test_stream_timing_directives(simulator_url):
    started = time.monotonic()
    _, events, _ = read_stream(simulator_url, "hi sim:chunks=4 sim:duration=0.4 sim:first_delay=0.2")
    assert time.monotonic() - started >= 0.55 and events[-1] == b"[DONE]"


def test_delay_before_headers(simulator_url):
    started = time.monotonic()
    assert chat(simulator_url, "hi sim:delay=0.3").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_malformed_after(simulator_url):
    _, events, error = read_stream(simulator_url, "hi sim:chunks=4 sim:malformed_after=2")
    assert error is None and events[-1] == b"[DONE]"
    assert events[3] == b"{not json"
    assert content_of(parse(events[:3] + events[4:])) == f"{OFFLINE_NOTICE} You said: hi"


def test_no_done(simulator_url):
    _, events, error = read_stream(simulator_url, "hi sim:no_done")
    assert error is None and b"[DONE]" not in events
    assert json.loads(events[-1])["choices"][0]["finish_reason"] == "stop"


def test_break_after_cuts_connection(simulator_url):
    _, events, error = read_stream(simulator_url, "hi sim:chunks=5 sim:break_after=2")
    assert isinstance(error, requests.exceptions.ChunkedEncodingError)
    assert b"[DONE]" not in events and len(events) == 1 + 2


def test_client_abort_is_counted():
    # A simulator of its own: open_streams is a live gauge, and the session simulator may still
    # be serving an earlier test's stream.
    with simulator_of_its_own() as server:
        # A 10-second stream, so it cannot end on its own before the wait below does.
        open_then_hang_up(server.port, "hi sim:reply=word sim:repeat=300 sim:chunks=200 sim:interval=0.05")
        stats = wait_until(lambda: (s := server.simulator.stats())["streams_aborted"] == 1 and s, timeout=5,
                           message="the stream to be counted as aborted")
        assert stats, server.simulator.stats()
        assert stats["streams_started"] == 1 and stats["streams_completed"] == 0 and stats["open_streams"] == 0
