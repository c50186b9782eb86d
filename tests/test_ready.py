"""`GET /health/ready`: the upstream (probed, cached) and the rate-limit storage."""
from __future__ import annotations

import pytest

from tests.helpers import free_port, wait_until


def test_ready_when_upstream_and_storage_answer(client, simulator):
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "status": "ready",
                                   "checks": {"upstream": "ok", "rate_limit_storage": "ok"}}
    assert simulator.stats()["models_requests"] == 1


def test_upstream_probe_is_cached(make_app, simulator):
    client = make_app(READY_CACHE_S="0.3").test_client()
    for _ in range(5):
        assert client.get("/health/ready").status_code == 200
    assert simulator.stats()["models_requests"] == 1
    wait_until(lambda: client.get("/health/ready") and simulator.stats()["models_requests"] == 2, timeout=5,
               message="the cached probe to expire")


def test_unreachable_upstream_is_503_naming_it(make_app):
    client = make_app(KIMI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1").test_client()
    response = client.get("/health/ready", headers={"X-Request-ID": "req-ready"})
    body = response.get_json()
    assert response.status_code == 503
    assert body["success"] is False and body["code"] == "not_ready" and body["request_id"] == "req-ready"
    assert body["failed"] == ["upstream"]
    assert body["checks"] == {"upstream": "upstream_unavailable", "rate_limit_storage": "ok"}
    assert "upstream" in body["error"]
    assert client.get("/health").status_code == 200, "liveness must not depend on the upstream"


def test_rejected_upstream_key_is_not_ready(make_app):
    client = make_app(KIMI_API_KEY="sk-not-the-simulators-key").test_client()
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["checks"]["upstream"] == "upstream_auth_failed"
    assert "sk-not-the-simulators-key" not in response.get_data(as_text=True)


def test_unreachable_rate_limit_storage_is_503_naming_it_when_failing_closed(make_app):
    client = make_app(RATE_LIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0", RATE_LIMIT_FAIL_OPEN="false").test_client()
    response = client.get("/health/ready")
    body = response.get_json()
    assert response.status_code == 503
    assert body["failed"] == ["rate_limit_storage"]
    assert body["checks"] == {"upstream": "ok", "rate_limit_storage": "unreachable"}



def test_unreachable_rate_limit_storage_is_still_ready_when_failing_open(make_app):
    """Fail-open promises to serve on with in-memory limits, so readiness must not pull the
    instance out of the load balancer for it."""
    client = make_app(RATE_LIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0").test_client()
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"upstream": "ok", "rate_limit_storage": "in_memory_fallback"}
    assert client.post("/api/chat/completion", json={"message": "hi"}).status_code == 200


@pytest.mark.parametrize("answer", [
    {"status": 405}, {"status": 400}, {"status": 410},  # no /models route of the kind we ask for
    {"status": 429, "type": "rate_limit_reached_error"}, {"status": 429, "type": "engine_overloaded_error"},
    {"status": 429, "type": "exceeded_current_quota_error"},
])
def test_an_upstream_that_answers_and_accepts_our_key_is_ready(make_app, simulator, answer):
    """Only connection failures, timeouts, 5xx and auth failures make the upstream not ready."""
    simulator.script_models([answer])
    response = make_app().test_client().get("/health/ready")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"]["upstream"] == "ok"
    assert simulator.stats()["models_requests"] == 1


@pytest.mark.parametrize("answer,code", [({"status": 503}, "upstream_error"),
                                         ({"status": 403, "type": "permission_denied_error"}, "upstream_auth_failed")])
def test_an_upstream_that_fails_or_refuses_our_key_is_not_ready(make_app, simulator, answer, code):
    simulator.script_models([answer])
    response = make_app().test_client().get("/health/ready")
    assert response.status_code == 503 and response.get_json()["checks"]["upstream"] == code
