"""`POST /api/chat/stream` under the real gunicorn: unbuffered delivery, usage in both
upstream forms, reasoning, failures before and after the first byte, keep-alives, and the
upstream closed when the client leaves."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from kimi_backend.moonshot.framing import ChunkedBody
from kimi_backend.moonshot.stream import DRAIN_TIMEOUT_S
from tests.conftest import UPSTREAM_KEY
from tests.helpers import post_by_hand, receive_until, wait_until
from tests.servers import Service


@pytest.fixture(scope="module")
def service(simulator_server):
    """The service under gunicorn (as `make run` starts it), live against the test simulator."""
    svc = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url,
                  SSE_KEEPALIVE_S="0.2", UPSTREAM_READ_TIMEOUT_S="3", RATE_LIMIT_MAX_REQUESTS="100000",
                  MAX_CONNECTIONS_PER_IP="1000")  # one test process plays hundreds of clients
    yield svc
    assert UPSTREAM_KEY not in svc.log()
    svc.stop()


def read_stream(url: str, messages, **body):
    """Posts a stream request and returns (status, [(seconds since send, kind, payload)])."""
    started = time.monotonic()
    events = []
    with requests.post(url + "/api/chat/stream", json={"messages": messages, **body}, stream=True, timeout=20) as response:
        if response.status_code != 200:
            return response.status_code, response.json()
        buffer = b""
        for block in response.iter_content(chunk_size=None):
            buffer += block
            while b"\n\n" in buffer:
                raw, buffer = buffer.split(b"\n\n", 1)
                elapsed = time.monotonic() - started
                if raw.startswith(b":"):
                    events.append((elapsed, "comment", raw.decode()))
                elif raw.startswith(b"data: "):
                    payload = raw[6:].decode()
                    events.append((elapsed, "data", payload if payload == "[DONE]" else json.loads(payload)))
    return 200, events


def data_events(events):
    return [payload for _, kind, payload in events if kind == "data"]


def test_events_arrive_unbuffered(service, simulator):
    status, events = read_stream(service.url, "sim:chunks=6 sim:interval=0.4 sim:reply=one_two_three_four_five_six")
    assert status == 200
    content_times = [t for t, kind, payload in events if kind == "data" and isinstance(payload, dict) and payload.get("content")]
    assert len(content_times) == 6
    # The first piece arrives while the upstream is still generating the rest (~2 s more).
    assert content_times[-1] - content_times[0] > 1.5
    assert content_times[0] < content_times[-1] - 1.5
    gaps = [b - a for a, b in zip(content_times, content_times[1:])]
    assert min(gaps) > 0.2, gaps


def test_stream_headers(service, simulator):
    with requests.post(service.url + "/api/chat/stream", json={"messages": "hi"}, stream=True, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        response.content


@pytest.mark.parametrize("directive", ["", "sim:top_usage"])
def test_usage_from_either_upstream_form(service, simulator, directive):
    status, events = read_stream(service.url, f"count me {directive}")
    payloads = data_events(events)
    assert payloads[-1] == "[DONE]"
    final = payloads[-2]
    assert final["finish_reason"] == "stop" and final["content"] == ""
    usage = final["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_reasoning_deltas_come_before_content(service, simulator):
    _, events = read_stream(service.url, "think sim:reasoning=3")
    payloads = [p for p in data_events(events) if p != "[DONE]"]
    reasoning = [p for p in payloads if "reasoning" in p]
    assert len(reasoning) == 3 and all(p["content"] == "" for p in reasoning)
    first_content = next(i for i, p in enumerate(payloads) if p.get("content"))
    assert all(payloads.index(p) < first_content for p in reasoning)


@pytest.mark.parametrize("directive,code", [
    ("sim:break_after=2 sim:chunks=6", "upstream_disconnected"),
    ("sim:malformed_after=2 sim:chunks=6", "upstream_malformed"),
    ("sim:misshapen_after=2 sim:chunks=6", "upstream_malformed"),
    ("sim:no_done", "upstream_incomplete"),
    ("sim:first_delay=5", "upstream_timeout"),
])
def test_failures_after_the_first_byte_are_in_band(service, simulator, directive, code):
    status, events = read_stream(service.url, f"go {directive}")
    assert status == 200
    payloads = data_events(events)
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["code"] == code and payloads[-2]["error"]
    assert len(payloads[-2]["request_id"]) == 32  # the X-Request-ID of this stream, for the logs
    assert "finish_reason" not in payloads[-2]


def test_failure_before_the_first_byte_is_a_json_status(service, simulator):
    status, body = read_stream(service.url, "sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=3")
    assert status == 429 and body["code"] == "upstream_rate_limited"


def test_keepalive_comments_while_upstream_is_silent(service, simulator):
    _, events = read_stream(service.url, "slow sim:first_delay=1.2")
    first_content = next(t for t, kind, p in events if kind == "data" and isinstance(p, dict) and p.get("content"))
    keepalives = [t for t, kind, p in events if kind == "comment" and "keep-alive" in p and t < first_content]
    assert len(keepalives) >= 3, events[:8]
    assert data_events(events)[-1] == "[DONE]"


def _open_and_abandon(port: int, message: str, read_until: bytes) -> float:
    """Opens a stream on a raw socket, reads until `read_until` appears, then closes the
    socket; returns the monotonic time of the close."""
    with post_by_hand(port, "/api/chat/stream", {"messages": message}) as sock:
        receive_until(sock, lambda received: read_until in received)
    return time.monotonic()


@pytest.mark.parametrize("message,read_until", [
    ("sim:chunks=100 sim:interval=0.1", b'"content"'),   # upstream busy sending
    ("sim:chunks=40 sim:interval=0.5", b'"content"'),    # a chunk every half second
    ("sim:first_delay=30", b": stream open"),           # upstream silent (thinking)
    ("sim:drip=0.1", b": stream open"),                 # upstream sending only content-less chunks
])
def test_client_disconnect_closes_the_upstream_within_half_a_second(service, simulator, message, read_until):
    closed_at = _open_and_abandon(service.port, message, read_until)
    wait_until(lambda: simulator.stats()["streams_aborted"] == 1, timeout=5, message="the upstream stream to be aborted")
    assert time.monotonic() - closed_at < 0.5
    assert simulator.stats()["streams_completed"] == 0


def test_client_disconnect_before_the_upstream_answers_ends_the_upstream_request(service, simulator):
    """The upstream takes 30 s to its headers; the client leaves after 0.3 s; the upstream
    request must end then, not at the read timeout."""
    with post_by_hand(service.port, "/api/chat/stream", {"messages": "sim:delay=30"}):
        wait_until(lambda: simulator.stats()["in_flight"] == 1, timeout=5, message="the upstream request to start")
    closed_at = time.monotonic()
    wait_until(lambda: simulator.stats()["abandoned_before_headers"] == 1, timeout=5,
               message="the upstream request to be closed")
    assert time.monotonic() - closed_at < 0.5
    wait_until(lambda: simulator.stats()["in_flight"] == 0, timeout=5, message="the upstream request to end")


def test_keepalives_keep_coming_while_the_upstream_sends_only_empty_chunks(service, simulator):
    """Content-less chunks every 0.1 s are not content: the client still gets a keep-alive
    every SSE_KEEPALIVE_S (0.2 s), until the read timeout (3 s) ends the stream in-band."""
    _, events = read_stream(service.url, "sim:drip=0.1")
    keepalives = [t for t, kind, p in events if kind == "comment" and "keep-alive" in p]
    assert len(keepalives) >= 10, events[:5]
    assert max(b - a for a, b in zip(keepalives, keepalives[1:])) < 0.6
    payloads = data_events(events)
    assert payloads[-2]["code"] == "upstream_timeout" and payloads[-1] == "[DONE]"


def test_done_then_silence_lets_the_upstream_go_long_before_the_read_timeout(service, simulator):
    """An upstream that sends [DONE] and then neither ends its body nor says anything more:
    the client has its [DONE] at once, and the upstream connection is let go within
    DRAIN_TIMEOUT_S of it, not held until the read timeout (3 s here, 120 s by default)."""
    simulator.script([{"done_then_silence": True}])
    started = time.monotonic()
    status, events = read_stream(service.url, "hi")
    assert status == 200 and data_events(events)[-1] == "[DONE]"
    done_at = started + next(t for t, kind, payload in events if payload == "[DONE]")
    wait_until(lambda: simulator.stats()["in_flight"] == 0, timeout=5, message="the upstream connection to be let go")
    assert time.monotonic() - done_at < DRAIN_TIMEOUT_S + 1.0


def test_a_few_hundred_concurrent_streams(service, simulator):
    results = []
    lock = threading.Lock()

    def one(i):
        status, events = read_stream(service.url, f"stream {i} sim:chunks=5 sim:interval=0.2")
        with lock:
            results.append((status, data_events(events)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 300
    for status, payloads in results:
        assert status == 200 and payloads[-1] == "[DONE]" and payloads[-2]["usage"]["total_tokens"] > 0
    # The simulator counts a stream once its server has closed the reply, which may be just
    # after our client read the [DONE] we relayed.
    wait_until(lambda: simulator.stats()["streams_completed"] == 300, timeout=10, message="300 completed streams")


def test_a_finished_stream_returns_its_upstream_connection_to_the_pool(make_app, simulator_process, monkeypatch):
    """Against a keep-alive upstream (the simulator's gevent server), consecutive streams
    share one upstream connection: a complete stream is released, not thrown away, and
    released before the stream's response ends, so the next request finds it in the pool
    even when the release is slow (here made slow on purpose)."""
    from kimi_backend.moonshot.stream import UpstreamStream
    release = UpstreamStream.close

    def slow_release(self):
        time.sleep(0.2)  # a slow drain, widening the window in which the next request starts
        release(self)
    monkeypatch.setattr(UpstreamStream, "close", slow_release)
    upstream = simulator_process(api_key=UPSTREAM_KEY)
    app = make_app(KIMI_BASE_URL=upstream.base_url)
    client = app.test_client()
    for _ in range(3):
        body = client.post("/api/chat/stream", json={"messages": "hi"}).get_data()
        assert body.endswith(b"data: [DONE]\n\n")
    pools = app.extensions["kimi_service"].client._adapter.poolmanager.pools
    assert [pools[key].num_connections for key in pools.keys()] == [1]


def test_a_slow_client_gets_the_whole_reply_in_order(service, simulator):
    """A client that reads nothing for a while, through small buffers, while the upstream sends
    about six megabytes (more than the kernel buffers on both sides hold): the relay waits for it (and stops reading the upstream meanwhile), and
    every event arrives, in order."""
    messages = "story sim:repeat=400000 sim:chunks=400 sim:interval=0"
    status, events = read_stream(service.url, messages)
    assert status == 200
    expected = "".join(payload.get("content", "") for payload in data_events(events) if isinstance(payload, dict))
    assert len(expected) > 5_000_000
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", int(service.url.rsplit(":", 1)[1])))
    body = json.dumps({"messages": messages}).encode()
    sock.sendall(b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with sock:
        time.sleep(1.0)  # the slow client: it reads nothing yet (this is the behaviour under test, not a wait for it)
        received = receive_until(sock, lambda data: data.endswith(b"0\r\n\r\n") and b"data: [DONE]" in data)
    head, raw = received.split(b"\r\n\r\n", 1)
    assert b" 200 " in head.split(b"\r\n")[0]
    sse = ChunkedBody().decode(raw)
    content = "".join(json.loads(block[6:]).get("content", "") for block in sse.split(b"\n\n")
                      if block.startswith(b"data: {"))
    assert content == expected
