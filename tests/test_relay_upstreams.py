"""The relay reads the upstream's body off the socket itself: every HTTP/1.1 framing an
upstream may use is relayed whole, however its bytes are split, and what came before a
failure in the same block is relayed before the in-band error; by the generator relay and by
the event-loop relay under the real gunicorn alike. The upstream here is a raw socket server
that plays one canned answer per connection."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.conftest import UPSTREAM_KEY
from tests.helpers import RawUpstream, wait_until
from tests.servers import Service

HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def sse(*chunks: dict, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def delta(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


FINAL = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                      "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}]}


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


class CannedUpstream(RawUpstream):
    """Answers every request with `pieces`, written one by one `gap_s` apart, then closes.
    `accepted_count` and `closed_count`: connections taken, and closed after their answer."""

    def __init__(self, pieces: list[bytes], gap_s: float = 0.0):
        self.pieces, self.gap_s = pieces, gap_s
        self.accepted_count = self.closed_count = 0
        self._lock = threading.Lock()  # each connection is answered in a thread of its own
        super().__init__()

    def accepted(self) -> None:
        self.accepted_count += 1  # one accepting thread: no lock needed

    def answer(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        finally:
            with self._lock:
                self.closed_count += 1

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, body = request.split(b"\r\n\r\n", 1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            for piece in self.pieces:
                conn.sendall(piece)
                time.sleep(self.gap_s)


def data_events(body: bytes) -> list:
    return [json.loads(raw[6:]) if raw[6:] != b"[DONE]" else "[DONE]"
            for raw in body.split(b"\n\n") if raw.startswith(b"data: ")]


@pytest.fixture(scope="module")
def served():
    """The service under gunicorn (its gevent worker relays from the event loop, hub_relay.py),
    with one canned upstream whose pieces each test sets."""
    upstream = CannedUpstream([])
    service = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=upstream.base_url, UPSTREAM_MAX_RETRIES="0",
                      UPSTREAM_READ_TIMEOUT_S="2", RATE_LIMIT_MAX_REQUESTS="100000")
    yield service, upstream
    service.stop()
    upstream.close()


@pytest.fixture(params=["generator relay (test client)", "event-loop relay (gunicorn)"])
def relay_through(request, make_app):
    """Streams one request through the service whose upstream plays `pieces`, relayed by the
    generator (Flask's test client) or from gevent's event loop (the real gunicorn worker);
    returns its data events."""
    upstreams = []

    def through_test_client(pieces: list[bytes], gap_s: float = 0.0) -> list:
        upstream = CannedUpstream(pieces, gap_s)
        upstreams.append(upstream)
        app = make_app(KIMI_BASE_URL=upstream.base_url, UPSTREAM_MAX_RETRIES="0", UPSTREAM_READ_TIMEOUT_S="2")
        return data_events(app.test_client().post("/api/chat/stream", json={"messages": "hi"}).get_data())

    def through_gunicorn(pieces: list[bytes], gap_s: float = 0.0) -> list:
        service, upstream = request.getfixturevalue("served")
        # Every earlier answer's connection closed first: the service would otherwise take one
        # from its pool before the close reached it (the canned answers close without saying so).
        wait_until(lambda: upstream.closed_count == upstream.accepted_count, timeout=10,
                   message="the canned upstream to close its earlier connections")
        upstream.pieces, upstream.gap_s = pieces, gap_s
        answer = requests.post(service.url + "/api/chat/stream", json={"messages": "hi"}, timeout=20)
        assert answer.status_code == 200, answer.text
        return data_events(answer.content)

    yield through_gunicorn if "gunicorn" in request.param else through_test_client
    for upstream in upstreams:
        upstream.close()


def texts(events: list) -> str:
    return "".join(event.get("content", "") for event in events if isinstance(event, dict))


BODY = sse(delta("Hel"), delta("lo, "), delta("w\u00f6rld"), FINAL)


@pytest.mark.parametrize("size", [1, 7, 64, 100000])
def test_chunked_bodies_in_chunks_of_any_size(relay_through, size):
    events = relay_through([HEAD_CHUNKED + chunked(BODY, size)])
    assert texts(events) == "Hello, w\u00f6rld"
    assert events[-2]["usage"]["total_tokens"] == 3 and events[-1] == "[DONE]"


def test_chunked_body_split_across_writes_anywhere(relay_through):
    raw = HEAD_CHUNKED + chunked(BODY, 13)
    events = relay_through([raw[i:i + 5] for i in range(0, len(raw), 5)], gap_s=0.001)
    assert texts(events) == "Hello, w\u00f6rld" and events[-1] == "[DONE]"


def test_content_length_body(relay_through):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    events = relay_through([head, BODY[:10], BODY[10:]], gap_s=0.01)
    assert texts(events) == "Hello, w\u00f6rld" and events[-1] == "[DONE]"


def test_close_delimited_body(relay_through):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    events = relay_through([head + BODY[:20], BODY[20:]], gap_s=0.01)
    assert texts(events) == "Hello, w\u00f6rld" and events[-1] == "[DONE]"


def test_close_delimited_body_without_done_is_incomplete(relay_through):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    events = relay_through([head + sse(delta("Hel"), done=False)])
    assert texts(events) == "Hel"
    assert events[-2]["code"] == "upstream_incomplete" and events[-1] == "[DONE]"


def test_chunks_before_a_failure_in_the_same_block_are_relayed_first(relay_through):
    body = sse(delta("Hel"), delta("lo"), done=False) + b"data: {not json\n\n"
    events = relay_through([HEAD_CHUNKED + chunked(body, 100000)])
    assert texts(events) == "Hello"
    assert events[-2]["code"] == "upstream_malformed" and events[-1] == "[DONE]"


def test_broken_chunk_framing_is_an_in_band_error(relay_through):
    events = relay_through([HEAD_CHUNKED + b"5\r\ndata: XX\r\n"])
    assert events[-2]["code"] == "upstream_disconnected" and events[-1] == "[DONE]"


def test_body_cut_before_its_last_chunk_is_an_in_band_error(relay_through):
    events = relay_through([HEAD_CHUNKED + chunked(sse(delta("Hel"), done=False), 100000)[:-5]])
    assert texts(events) == "Hel"
    assert events[-2]["code"] == "upstream_disconnected" and events[-1] == "[DONE]"
