"""`GET /metrics` in one process: what each counter counts (the several-worker case is in
test_gunicorn_observability.py)."""
from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families


def value(name: str, **labels: str) -> float:
    """A sample's current value in this process's registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_latency_and_tokens_are_counted(client):
    before = value("kimi_http_requests_total", method="POST", route="/api/chat/completion", status="200")
    observed = value("kimi_http_request_duration_seconds_count", route="/api/chat/completion")
    upstream = value("kimi_upstream_request_duration_seconds_count", endpoint="chat")
    tokens_in = value("kimi_tokens_total", model="kimi-k2.7-code", direction="in")
    tokens_out = value("kimi_tokens_total", model="kimi-k2.7-code", direction="out")
    usage = client.post("/api/chat/completion", json={"message": "hi", "model": "kimi-k2.7-code"}).get_json()["data"]["usage"]
    assert value("kimi_http_requests_total", method="POST", route="/api/chat/completion", status="200") == before + 1
    assert value("kimi_http_request_duration_seconds_count", route="/api/chat/completion") == observed + 1
    assert value("kimi_upstream_request_duration_seconds_count", endpoint="chat") == upstream + 1
    assert value("kimi_tokens_total", model="kimi-k2.7-code", direction="in") == tokens_in + usage["prompt_tokens"]
    assert value("kimi_tokens_total", model="kimi-k2.7-code", direction="out") == tokens_out + usage["completion_tokens"]


def test_upstream_errors_are_counted_by_moonshot_type(make_app, simulator):
    client = make_app(UPSTREAM_MAX_RETRIES="0").test_client()
    before = value("kimi_upstream_errors_total", endpoint="chat", type="exceeded_current_quota_error")
    simulator.script([{"status": 429, "type": "exceeded_current_quota_error"}])
    assert client.post("/api/chat/completion", json={"message": "hi"}).status_code == 429
    assert value("kimi_upstream_errors_total", endpoint="chat", type="exceeded_current_quota_error") == before + 1


def test_stream_errors_after_the_start_are_counted(client):
    before = value("kimi_upstream_errors_total", endpoint="chat_stream", type="upstream_disconnected")
    body = client.post("/api/chat/stream", json={"messages": "hi sim:break_after=2"}).get_data()
    assert b'"code":"upstream_disconnected"' in body
    assert value("kimi_upstream_errors_total", endpoint="chat_stream", type="upstream_disconnected") == before + 1


def test_active_streams_rise_while_a_stream_is_open(client):
    before = value("kimi_active_streams")
    response = client.post("/api/chat/stream", json={"messages": "hi sim:chunks=10"}, buffered=False)
    next(iter(response.response))
    assert value("kimi_active_streams") == before + 1
    response.close()
    assert value("kimi_active_streams") == before


def test_rate_limit_rejections_are_counted_and_upstream_429s_are_not(make_app, simulator):
    client = make_app(RATE_LIMIT_MAX_REQUESTS="1", UPSTREAM_MAX_RETRIES="0").test_client()
    before = value("kimi_rate_limit_rejections_total", route="/api/info")
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info").status_code == 429
    assert value("kimi_rate_limit_rejections_total", route="/api/info") == before + 1
    other = make_app(UPSTREAM_MAX_RETRIES="0").test_client()
    upstream_before = value("kimi_rate_limit_rejections_total", route="/api/chat/completion")
    simulator.script([{"status": 429, "type": "rate_limit_reached_error"}])
    assert other.post("/api/chat/completion", json={"message": "hi"}).status_code == 429
    assert value("kimi_rate_limit_rejections_total", route="/api/chat/completion") == upstream_before


def test_metrics_endpoint_serves_prometheus_text(client):
    client.get("/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    names = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"kimi_http_requests", "kimi_http_request_duration_seconds", "kimi_upstream_request_duration_seconds",
            "kimi_upstream_errors", "kimi_tokens", "kimi_active_streams", "kimi_rate_limit_rejections"} <= names


def test_metrics_token_is_required_when_set(make_app):
    client = make_app(METRICS_TOKEN="metrics-secret").test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "metrics-secret"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["code"] == "invalid_metrics_token"
        assert "metrics-secret" not in response.get_data(as_text=True)
    assert client.get("/metrics", headers={"Authorization": "Bearer metrics-secret"}).status_code == 200


def test_every_label_is_bounded(client):
    """Random methods and paths (and, in test_fault_matrix, model ids) must not create series:
    /metrics holds the same series however many of them arrive."""
    def series() -> set:
        text = client.get("/metrics").get_data(as_text=True)
        return {(s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(text) for s in f.samples}

    for i in range(50):
        client.open("/health", method=f"X{i}QZ")
        client.get(f"/no-such-page-{i}")
    series()  # /metrics's own series exist from here on, whichever test ran first
    before = series()
    for i in range(50, 300):
        assert client.open("/health", method=f"X{i}QZ").status_code == 405
        client.get(f"/no-such-page-{i}")
    after = series()
    assert after == before
    assert not [labels for _, labels in after if ("method", "X51QZ") in labels]
    assert [labels for _, labels in after if ("method", "other") in labels]
