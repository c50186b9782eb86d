"""Browser tokens as `make run` serves them (gunicorn), with a real redis-server shared by two
instances of two workers each: a token minted on one instance works on the other, a
revocation on one holds on every worker of both, and a token's own limit is exact across them."""
from __future__ import annotations

import itertools

import pytest
import requests

from tests.servers import LONG_WINDOW_MS, RedisServer, fetch_all
from tests.token_support import ADMIN, SITE, token_config


@pytest.fixture
def redis_server():
    """A fresh redis-server for this test (skipped without one, except under CI)."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def two_instances(redis_server, served):
    env = token_config(RATE_LIMIT_STORAGE_URI=redis_server.url, RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS,
                       RATE_LIMIT_MAX_REQUESTS="1000", WEB_CONCURRENCY="2")
    return served(**env), served(**env)


def mint(service, **body) -> str:
    response = requests.post(service.url + "/api/tokens", json=body, headers={"x-admin-key": ADMIN}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["token"]


def headers(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Origin": SITE}


def test_a_revocation_on_one_instance_holds_on_every_worker_of_both(two_instances):
    first, second = two_instances
    token = mint(first, subject="user-1")
    urls = [service.url + "/api/chat/models" for service in (first, second) * 4]
    assert [r.status_code for r in fetch_all(urls, headers(token))] == [200] * 8
    response = requests.delete(second.url + "/api/tokens/user-1", headers={"x-admin-key": ADMIN}, timeout=10)
    assert response.status_code == 200
    refused = fetch_all(urls, headers(token))
    assert [(r.status_code, r.json()["code"]) for r in refused] == [(401, "token_revoked")] * 8
    # A token minted afterwards, on either instance, is good everywhere.
    fresh = mint(first, subject="user-1")
    assert [r.status_code for r in fetch_all(urls, headers(fresh))] == [200] * 8


def test_a_tokens_own_limit_is_exact_across_instances(two_instances):
    first, second = two_instances
    token = mint(first, subject="user-2", rate_limit={"max_requests": 5, "window_ms": 3600000})
    urls = [service.url + "/api/chat/models" for service in itertools.islice(itertools.cycle(two_instances), 12)]
    responses = fetch_all(urls, headers(token))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 7
    assert {r.json()["code"] for r in responses if r.status_code == 429} == {"rate_limited"}
    assert {r.url.split("/api")[0] for r in responses if r.status_code == 200} == {first.url, second.url}
