"""The ledger and budgets under the real gunicorn: SIGTERM writes every queued row (SQLite and
a real PostgreSQL), a client that hangs up mid-stream is still charged, budgets in Redis are
exact across two instances of two workers, and an unreachable database stops startup."""
from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import redis
import requests
from sqlalchemy import create_engine, select

from kimi_backend.config.parsers import key_id
from kimi_backend.usage import estimate
from kimi_backend.usage.schema import usage
from tests.conftest import UPSTREAM_KEY
from tests.helpers import free_port, post_by_hand, receive_until, wait_until
from tests.servers import PostgresServer, Process, RedisServer, clean_env

KEY_A, KEY_B = "served-key-a", "served-key-b"


@pytest.fixture
def upstream_env(simulator_server, simulator):
    """Settings that point a gunicorn service at the test simulator, with two client keys."""
    return {"KIMI_API_KEY": UPSTREAM_KEY, "KIMI_BASE_URL": simulator_server.base_url,
            "RATE_LIMIT_MAX_REQUESTS": "10000", "VALID_API_KEYS": f"{KEY_A},{KEY_B}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A SQLite file, or a database in a PostgreSQL server started for this test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/usage.sqlite3"
    server = PostgresServer()
    request.addfinalizer(server.remove)
    return server.url


def engine_for(url: str):
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def ledger(url: str) -> list[dict]:
    """The ledger's rows, read straight from the database."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(select(usage).order_by(usage.c.id)).mappings()]
    finally:
        engine.dispose()


def chat(url: str, key: str, message: str = "hi", **body) -> requests.Response:
    return requests.post(url + "/api/chat/completion", json={"message": message, "thinking": False, **body},
                         headers={"x-api-key": key}, timeout=10)


def test_sigterm_writes_every_queued_row(served, upstream_env, database_url):
    # The writer holds rows for up to ten minutes: only the shutdown can have written them.
    # One worker, so the rows are in request order (each worker writes its own queue).
    service = served(**upstream_env, USAGE_DATABASE_URL=database_url, USAGE_FLUSH_INTERVAL_S="600", WEB_CONCURRENCY="1")
    totals = [chat(service.url, KEY_A, f"question {i}").json()["data"]["usage"]["total_tokens"] for i in range(5)]
    stream = requests.post(service.url + "/api/chat/stream", json={"messages": "a story"}, timeout=10).text
    totals.append(json.loads([line for line in stream.splitlines() if '"usage"' in line][0][6:])["usage"]["total_tokens"])
    assert ledger(database_url) == []
    assert service.stop() == 0
    rows = ledger(database_url)
    assert [row["total_tokens"] for row in rows] == totals
    assert [row["route"] for row in rows] == ["/api/chat/completion"] * 5 + ["/api/chat/stream"]


def test_a_client_that_hangs_up_mid_stream_is_charged(served, upstream_env, simulator, tmp_path):
    url = f"sqlite:///{tmp_path}/usage.sqlite3"
    service = served(**upstream_env, USAGE_DATABASE_URL=url, USAGE_FLUSH_INTERVAL_S="0.05",
                     TOKEN_BUDGET_PER_DAY="100000")
    message = "a long story sim:chunks=100 sim:interval=0.1"
    with post_by_hand(service.port, "/api/chat/stream", {"messages": message}, {"x-api-key": KEY_A}) as sock:
        receive_until(sock, lambda received: received.count(b'"content":"') >= 3)
    row = wait_until(lambda: (rows := ledger(url)) and rows[0], timeout=10, message="the cut stream's ledger row")
    assert (row["cut_short"], row["estimated"], row["outcome"]) == (True, True, "client_closed")
    assert row["client"] == f"key:{key_id(KEY_A)}"
    assert row["total_tokens"] >= estimate.prompt_tokens({"messages": [{"role": "user", "content": message}]}) + 1
    assert simulator.stats()["streams_completed"] == 0
    # The budget was charged the same figure.
    response = chat(service.url, KEY_A, max_tokens=5)
    assert int(response.headers["X-Budget-Remaining"]) == \
        100000 - row["total_tokens"] - response.json()["data"]["usage"]["total_tokens"]


@pytest.mark.parametrize("path, body", [
    ("/api/chat/completion", {"message": "a long question sim:delay=30"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a long question sim:delay=30"}]}),
])
def test_a_client_that_leaves_before_a_reply_ends_the_upstream_call_and_is_charged_its_prompt(
        served, upstream_env, simulator, tmp_path, path, body):
    """A non-streamed call whose reply would take 30 s (a thinking model's): the client hangs
    up after the upstream has the request, and the upstream request ends then, not when the
    reply comes; the call is charged its prompt's estimate, in the ledger and the budget."""
    url = f"sqlite:///{tmp_path}/usage.sqlite3"
    service = served(**upstream_env, USAGE_DATABASE_URL=url, USAGE_FLUSH_INTERVAL_S="0.05",
                     TOKEN_BUDGET_PER_DAY="100000")
    with post_by_hand(service.port, path, body, {"x-api-key": KEY_A}):
        wait_until(lambda: simulator.stats()["in_flight"] == 1, timeout=5, message="the upstream request to start")
    wait_until(lambda: simulator.stats()["abandoned_before_headers"] == 1, timeout=2,
               message="the upstream request to be ended")
    row = wait_until(lambda: (rows := ledger(url)) and rows[0], timeout=10, message="the call's ledger row")
    assert (row["route"], row["status"], row["outcome"], row["estimated"]) == (path, 499, "client_closed", True)
    prompt = estimate.prompt_tokens({"messages": [{"role": "user", "content": "a long question sim:delay=30"}]})
    assert row["prompt_tokens"] == row["total_tokens"] >= prompt > 0 and row["completion_tokens"] == 0
    response = chat(service.url, KEY_A, max_tokens=5)
    assert int(response.headers["X-Budget-Remaining"]) == \
        100000 - row["total_tokens"] - response.json()["data"]["usage"]["total_tokens"]


def test_budgets_in_redis_are_exact_across_two_instances_of_two_workers(served, upstream_env):
    redis_server = RedisServer()
    try:
        env = dict(upstream_env, RATE_LIMIT_STORAGE_URI=redis_server.url, WEB_CONCURRENCY="2",
                   TOKEN_BUDGET_PER_DAY="100")
        first, second = served(**env), served(**env)
        # One at a time, alternating: each costs 12 and reserves 25, so exactly 7 fit in 100.
        statuses = [chat(service.url, KEY_A, max_tokens=20).status_code for service in [first, second] * 5]
        assert statuses == [200] * 7 + [429] * 3
        day = datetime.now(timezone.utc).date().isoformat()
        store = redis.Redis.from_url(redis_server.url)
        counter = "LIMITS:kimi:budget:{day}:client:key:{key}"  # `limits` prefixes its Redis keys
        assert int(store.get(counter.format(day=day, key=key_id(KEY_A)))) == 7 * 12
        # All at once: reservations may refuse some early, but never let more through than fits.
        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(lambda i: chat([first, second][i % 2].url, KEY_B, max_tokens=20), range(12)))
        served_count = sum(r.status_code == 200 for r in responses)
        assert 4 <= served_count <= 7
        assert {r.status_code for r in responses} <= {200, 429}
        assert int(store.get(counter.format(day=day, key=key_id(KEY_B)))) == 12 * served_count <= 100
    finally:
        redis_server.stop()


def test_an_unreachable_database_stops_startup_with_one_sentence(upstream_env):
    port = free_port()
    proc = Process([sys.executable, "serve.py"],
                   clean_env(**upstream_env, PORT=str(port),
                             USAGE_DATABASE_URL="postgresql://kimi:hunter2@127.0.0.1:1/usage"))
    try:
        proc.proc.wait(30)
    finally:
        proc.stop()
    log = proc.log()
    assert proc.proc.returncode != 0
    assert "configuration error: USAGE_DATABASE_URL: the usage database postgresql+psycopg://kimi:***@127.0.0.1:1/usage " \
           "cannot be opened (connection failed:" in log
    assert "Traceback" not in log and "hunter2" not in log
