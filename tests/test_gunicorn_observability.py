"""Observability under the real gunicorn: JSON log lines from gunicorn and the service,
metrics summed over several workers, and a graceful stop that lets streams finish."""
from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kimi_backend.moonshot.models import DEFAULT_MODEL
from tests.conftest import UPSTREAM_KEY
from tests.helpers import wait_until
from tests.servers import RedisServer, Service


def log_lines(service: Service) -> list[dict]:
    """Every line the service printed, each of which must be one JSON object."""
    lines = [line for line in service.log().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def stream_access(service: Service) -> list[tuple[int, str]]:
    """(status, outcome) of each access line the service wrote for /api/chat/stream."""
    return [(line["status"], line["outcome"]) for line in log_lines(service)
            if line.get("logger") == "kimi_backend.access" and line.get("route") == "/api/chat/stream"]


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture
def upstream_env(simulator_server, simulator):
    """Settings that point a gunicorn service at the test simulator over loopback."""
    return {"KIMI_API_KEY": UPSTREAM_KEY, "KIMI_BASE_URL": simulator_server.base_url,
            "RATE_LIMIT_MAX_REQUESTS": "10000"}


def test_every_log_line_is_json_with_request_ids_and_never_the_key(upstream_env):
    service = Service(**upstream_env)
    try:
        completion = requests.post(service.url + "/api/chat/completion", json={"message": "hi"},
                                   headers={"X-Request-ID": "req-e2e-1"}, timeout=10)
        stream = requests.post(service.url + "/api/chat/stream", json={"messages": "hi sim:chunks=3"}, timeout=10)
        missing = requests.get(service.url + "/nope", timeout=10)
        wait_until(lambda: sum(line.get("logger") == "kimi_backend.access" for line in log_lines(service)) >= 4,
                   timeout=10, message="the access lines")
    finally:
        assert service.stop() == 0
    lines = log_lines(service)
    assert UPSTREAM_KEY not in service.log()
    messages = [line["message"] for line in lines if line["logger"] == "gunicorn.error"]
    assert any(m.startswith("Starting gunicorn") for m in messages)
    assert any(m.startswith("Booting worker") for m in messages)
    access = {line["request_id"]: line for line in lines if line["logger"] == "kimi_backend.access"}
    assert access["req-e2e-1"]["route"] == "/api/chat/completion"
    assert access["req-e2e-1"]["tokens_out"] == completion.json()["data"]["usage"]["completion_tokens"]
    streamed = access[stream.headers["X-Request-ID"]]
    assert (streamed["outcome"], streamed["status"]) == ("ok", 200) and streamed["tokens_in"] > 0
    assert access[missing.headers["X-Request-ID"]]["status"] == 404
    assert all(line["logger"] != "gunicorn.access" for line in lines), "one access line per request, ours"


def test_two_workers_report_summed_totals(upstream_env):
    redis = RedisServer()
    service = Service(WEB_CONCURRENCY="2", RATE_LIMIT_STORAGE_URI=redis.url, **upstream_env)
    try:
        def one_completion(_):
            # A new connection each time, so either worker may accept it.
            with requests.Session() as session:
                return session.post(service.url + "/api/chat/completion", json={"message": "count me"}, timeout=10).json()

        replies = []

        def served_by_both_workers() -> bool:
            replies.extend(pool.map(one_completion, range(8)))
            return len({line["pid"] for line in log_lines(service) if line.get("route") == "/api/chat/completion"}) == 2
        with ThreadPoolExecutor(4) as pool:
            assert wait_until(served_by_both_workers, timeout=60, interval=0,
                              message="both workers to have served completions")
        tokens_out = sum(reply["data"]["usage"]["completion_tokens"] for reply in replies)
        for _ in range(4):
            text = requests.get(service.url + "/metrics", timeout=10).text
            assert sample(text, "kimi_http_requests_total", route="/api/chat/completion", status="200") == len(replies)
            assert sample(text, "kimi_tokens_total", model=DEFAULT_MODEL, direction="out") == tokens_out
            assert sample(text, "kimi_active_streams") == 0
    finally:
        service.stop()
        redis.stop()


def test_sigterm_lets_a_stream_finish_and_refuses_new_connections(upstream_env):
    service = Service(GRACEFUL_TIMEOUT_S="20", **upstream_env)
    events: list[bytes] = []
    first_event = threading.Event()

    def read_stream():
        with requests.post(service.url + "/api/chat/stream", json={"messages": "hi sim:chunks=10 sim:interval=0.3", "thinking": False},
                           stream=True, timeout=30) as response:
            for line in response.iter_lines():
                if line:
                    events.append(line)
                    first_event.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    try:
        assert first_event.wait(10), "the stream should start"
        service.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", service.port), timeout=1).close()
                return False
            except ConnectionRefusedError:
                return True

        wait_until(refused, timeout=5, message="new connections to be refused")
        assert events[-1] != b"data: [DONE]", "the stream must still be running when new connections are refused"
        reader.join(30)
        assert events[-1] == b"data: [DONE]"
        assert sum(event.startswith(b'data: {"content"') for event in events) == 11
        assert service.proc.wait(30) == 0
    finally:
        service.stop()
        reader.join(5)


def test_sigterm_ends_a_long_stream_in_band_inside_the_graceful_timeout(upstream_env, simulator):
    """A stream that would outlast GRACEFUL_TIMEOUT_S ends with an in-band `shutting_down`
    event and [DONE] before gunicorn would cut it, its upstream is closed, and its access
    line is written."""
    service = Service(GRACEFUL_TIMEOUT_S="3", **upstream_env)
    payloads: list = []
    started = threading.Event()

    def read_stream():
        with requests.post(service.url + "/api/chat/stream", json={"messages": "sim:chunks=200 sim:interval=0.1"},
                           stream=True, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    payloads.append(line[6:])
                    started.set()

    reader = threading.Thread(target=read_stream)
    reader.start()
    try:
        assert started.wait(10), "the stream should start"
        signalled_at = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        reader.join(10)
        ended_after = time.monotonic() - signalled_at
        assert payloads[-1] == b"[DONE]"
        last = json.loads(payloads[-2])
        assert last["code"] == "shutting_down" and last["error"] and last["request_id"]
        assert 1.0 < ended_after < 3.0, ended_after
        assert service.proc.wait(10) == 0
        wait_until(lambda: simulator.stats()["streams_aborted"] == 1, timeout=5, message="the upstream to be closed")
    finally:
        service.stop()
        reader.join(5)
    assert stream_access(service) == [(200, "shutting_down")]


@pytest.mark.parametrize("path, body, code_of", [
    ("/api/chat/stream", {"messages": "sim:delay=30"}, lambda body: body["code"]),
    ("/api/chat/completion", {"message": "sim:delay=30"}, lambda body: body["code"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "sim:delay=30"}]}, lambda body: body["error"]["code"]),
])
def test_sigterm_answers_a_request_still_waiting_for_the_upstream_with_a_503(upstream_env, simulator, tmp_path,
                                                                             path, body, code_of):
    """A stream whose upstream has not sent its headers, or a non-streamed call whose reply
    has not come, when the graceful timeout nears (here they would take 30 s) is answered 503
    `shutting_down` in JSON before gunicorn would cut it with no answer at all and kill the
    worker: its upstream request is ended, its access line written, and the worker exits on
    its own, writing the request's ledger row, charged its whole reservation (the upstream
    may have generated the reply all the same)."""
    from sqlalchemy import create_engine, select

    from kimi_backend.usage.schema import usage

    database = f"sqlite:///{tmp_path}/usage.sqlite3"
    service = Service(GRACEFUL_TIMEOUT_S="3", WEB_CONCURRENCY="1", USAGE_DATABASE_URL=database, **upstream_env)
    answers: list[requests.Response] = []

    def ask():
        answers.append(requests.post(service.url + path, json=body, timeout=30))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        wait_until(lambda: simulator.stats()["chat_requests"] == 1, timeout=10, message="the upstream request to start")
        signalled_at = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        asker.join(10)
        ended_after = time.monotonic() - signalled_at
        [answer] = answers
        assert (answer.status_code, code_of(answer.json())) == (503, "shutting_down"), answer.text
        assert answer.headers["Retry-After"] == "1" and answer.headers["X-Request-ID"]
        assert 1.0 < ended_after < 3.0, ended_after
        assert service.proc.wait(10) == 0
        wait_until(lambda: simulator.stats()["abandoned_before_headers"] == 1, timeout=5,
                   message="the upstream request to be ended")
    finally:
        service.stop()
        asker.join(5)
    access = [(line["status"], line["outcome"]) for line in log_lines(service)
              if line.get("logger") == "kimi_backend.access" and line.get("route") == path]
    assert access == [(503, "shutting_down")]
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            [row] = conn.execute(select(usage)).mappings().all()
    finally:
        engine.dispose()
    assert (row["route"], row["status"], row["outcome"], row["estimated"]) == (path, 503, "shutting_down", True)
    assert row["total_tokens"] > row["prompt_tokens"] > 0
