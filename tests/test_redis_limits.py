"""Limits in Redis, with a real redis-server: exact across two gunicorn instances of several
workers each, and the outage behaviour (RATE_LIMIT_FAIL_OPEN) when Redis stops mid-run."""
from __future__ import annotations

import itertools

import pytest
import requests

from tests.helpers import LONG_WINDOW_MS, wait_until
from tests.servers import RedisServer, fetch_all


@pytest.fixture
def redis_server():
    """A fresh redis-server for this test (skipped without one, except under CI)."""
    server = RedisServer()
    yield server
    server.stop()


def test_one_limit_is_exact_across_two_instances_of_two_workers(redis_server, served):
    env = dict(RATE_LIMIT_STORAGE_URI=redis_server.url, RATE_LIMIT_MAX_REQUESTS="20",
               RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS, WEB_CONCURRENCY="2")
    first, second = served(**env), served(**env)
    urls = [service.url + "/api/chat/models" for service in itertools.islice(itertools.cycle([first, second]), 36)]
    responses = fetch_all(urls)
    assert sorted(r.status_code for r in responses) == [200] * 20 + [429] * 16
    for response in responses:
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 3600
            assert response.headers["X-RateLimit-Limit"] == "20"
    # Both instances took part, and both now refuse.
    assert {r.url.split("/api")[0] for r in responses if r.status_code == 200} == {first.url, second.url}
    assert requests.get(first.url + "/api/info", timeout=10).status_code == 429
    assert requests.get(second.url + "/api/info", timeout=10).status_code == 429


def test_fail_open_keeps_answering_and_limiting_when_redis_stops(redis_server, served):
    # One worker: the in-memory fallback counts per worker process.
    service = served(RATE_LIMIT_STORAGE_URI=redis_server.url, RATE_LIMIT_MAX_REQUESTS="3",
                     RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS, WEB_CONCURRENCY="1")
    assert requests.get(service.url + "/api/info", timeout=10).status_code == 200
    redis_server.stop()
    # The in-memory fallback starts counting afresh, but it still counts.
    statuses = [requests.get(service.url + "/api/info", timeout=10).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert requests.get(service.url + "/health", timeout=10).status_code == 200
    assert "falling back to in-memory storage" in service.log()


def test_fail_closed_refuses_with_503_while_redis_is_down_and_recovers(redis_server, served):
    service = served(RATE_LIMIT_STORAGE_URI=redis_server.url, RATE_LIMIT_MAX_REQUESTS="10",
                     RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS, RATE_LIMIT_FAIL_OPEN="false")
    assert requests.get(service.url + "/api/info", timeout=10).status_code == 200
    redis_server.stop()
    for _ in range(3):
        response = requests.get(service.url + "/api/info", timeout=10)
        assert response.status_code == 503
        assert response.json()["code"] == "rate_limit_unavailable"
        assert "Retry-After" in response.headers
    assert requests.get(service.url + "/health", timeout=10).status_code == 200
    redis_server.start()
    # A fresh Redis has lost the old count: 10 more are allowed in this window.
    response = wait_until(lambda: (r := requests.get(service.url + "/api/info", timeout=10)).status_code == 200 and r,
                          timeout=20, message="the service to use Redis again")
    assert response.headers["X-RateLimit-Remaining"] == "9"
