"""Protection as `make run` serves it (gunicorn with gunicorn.conf.py): exact limits with the
default memory storage, in one process or shared by several workers, which proxy hops are
believed, and an upstream key that never shows in a response, a header or the log."""
from __future__ import annotations

import pytest
import requests

from tests.helpers import LONG_WINDOW_MS, free_port
from tests.servers import fetch_all

LEAK_KEY = "sk-leakcanary-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH"


def test_default_memory_storage_is_exact_under_gunicorn(served):
    service = served(RATE_LIMIT_MAX_REQUESTS="5", RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS)
    responses = fetch_all([service.url + "/api/chat/models"] * 12)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 7
    for response in responses:
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 3600


@pytest.mark.parametrize("how,workers", [({"extra_args": ("-w", "2")}, 2), ({"GUNICORN_CMD_ARGS": "--workers 3"}, 3),
                                         ({"WEB_CONCURRENCY": "2", "RATE_LIMIT_STORAGE_URI": "Memory://"}, 2)])
def test_memory_storage_with_several_workers_shares_one_exact_count(served, tmp_path, how, workers):
    # Issue 15 replaced the refusal to start: the workers count in one host-shared store.
    service = served(RATE_LIMIT_MAX_REQUESTS="5", RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS, RUNTIME_DIRECTORY=str(tmp_path),
                     **how)
    assert f"{workers} workers share their limit counts in {tmp_path}/kimi-backend-counts-" in service.log()
    statuses = sorted(r.status_code for r in fetch_all([service.url + "/api/chat/models"] * 12))
    assert statuses == [200] * 5 + [429] * 7


def test_without_trusted_proxies_x_forwarded_for_is_ignored(served):
    service = served(RATE_LIMIT_MAX_REQUESTS="3", RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS)
    statuses = [requests.get(service.url + "/api/info", headers={"X-Forwarded-For": f"198.51.100.{i}"},
                             timeout=10).status_code for i in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]


def test_one_trusted_proxy_means_the_last_hop_is_the_client(served):
    service = served(RATE_LIMIT_MAX_REQUESTS="2", RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS, TRUSTED_PROXY_COUNT="1")

    def status(forwarded_for: str) -> int:
        return requests.get(service.url + "/api/info", headers={"X-Forwarded-For": forwarded_for}, timeout=10).status_code

    assert [status("203.0.113.1"), status("203.0.113.1"), status("203.0.113.1")] == [200, 200, 429]
    assert status("203.0.113.2") == 200  # another client behind the same proxy has its own budget
    # A client cannot escape by prepending a forged hop: the proxy appends the real address last.
    assert status("192.0.2.77, 203.0.113.1") == 429


def test_the_upstream_key_never_leaves_the_server(served, simulator_process):
    """Runs gunicorn with a recognisable key against an upstream that rejects it and against
    none at all, exercises every kind of error at debug log level, and searches everything."""
    upstream = simulator_process(api_key="sk-the-only-key-the-simulator-accepts")
    rejected = served(KIMI_API_KEY=LEAK_KEY, KIMI_BASE_URL=upstream.base_url, LOG_LEVEL="debug",
                      REQUIRE_API_KEY="true", VALID_API_KEYS="client-key", UPSTREAM_MAX_RETRIES="0")
    unreachable = served(KIMI_API_KEY=LEAK_KEY, KIMI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
                         LOG_LEVEL="debug", NODE_ENV="production", UPSTREAM_MAX_RETRIES="0")
    client = {"x-api-key": "client-key"}
    calls = [
        (rejected, "post", "/api/chat/completion", {"message": "hi"}, client, 502),
        (rejected, "post", "/api/chat/stream", {"messages": "hi"}, client, 502),
        (rejected, "post", "/api/chat/history", {"messages": [{"role": "user", "content": "hi"}]}, client, 502),
        (rejected, "post", "/api/chat/completion", {"message": "hi"}, {}, 401),
        (rejected, "post", "/api/chat/completion", {"message": "hi"}, {"Authorization": f"Bearer {LEAK_KEY}"}, 401),
        (rejected, "get", "/api/chat/models", None, client, 200),
        (rejected, "get", "/api/info", None, {}, 200),
        (rejected, "get", "/health", None, {}, 200),
        (rejected, "get", "/no-such-page", None, {}, 404),
        (unreachable, "post", "/api/chat/completion", {"message": "hi"}, {}, 503),
        (unreachable, "post", "/api/chat/stream", {"messages": "hi"}, {}, 503),
        (unreachable, "post", "/api/chat/completion", b"{not json", {"Content-Type": "application/json"}, 400),
    ]
    for service, method, path, body, headers, expected in calls:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        response = requests.request(method, service.url + path, headers=headers, timeout=20, **kwargs)
        assert response.status_code == expected, (path, response.text)
        # The key a client sent itself may come back nowhere either (it is not one of ours).
        assert LEAK_KEY not in response.text and LEAK_KEY not in str(response.headers), path
        if expected >= 400:
            assert response.json()["success"] is False and "Traceback" not in response.text
    for service in (rejected, unreachable):
        service.stop()
        log = service.log()
        assert "POST /api/chat/completion" in log  # the debug-level log really was captured
        assert LEAK_KEY not in log and LEAK_KEY[:20] not in log
