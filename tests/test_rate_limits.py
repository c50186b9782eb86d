"""The limiter in one process: one budget per client over every API route, exempt health and
static routes, the 429 contract, and what happens when the limiter's storage is unreachable."""
from __future__ import annotations

import inspect
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import LONG_WINDOW_MS, free_port

ROOT = Path(__file__).resolve().parent.parent

# An hour: no test can straddle a fixed-window boundary.
LONG_WINDOW = {"RATE_LIMIT_WINDOW_MS": LONG_WINDOW_MS}


def limited_app(make_app, maximum: int, **overrides):
    return make_app(RATE_LIMIT_MAX_REQUESTS=str(maximum), **LONG_WINDOW, **overrides)


def assert_rate_limited(response, limit: int):
    assert response.status_code == 429
    body = response.get_json()
    assert body == {"success": False, "error": body["error"], "code": "rate_limited", "request_id": body["request_id"]}
    assert 1 <= int(response.headers["Retry-After"]) <= 3600
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) > time.time()


def test_the_n_plus_first_request_is_refused_across_all_api_routes(make_app):
    client = limited_app(make_app, 4).test_client()
    paths = ["/api/info", "/api/chat/models", "/api/info", "/api/chat/models"]
    remaining = [client.get(path).headers["X-RateLimit-Remaining"] for path in paths]
    assert remaining == ["3", "2", "1", "0"]
    assert_rate_limited(client.post("/api/chat/completion", json={"message": "hi"}), 4)
    assert_rate_limited(client.get("/api/info"), 4)


def test_health_and_static_are_not_limited(make_app):
    client = limited_app(make_app, 1).test_client()
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info").status_code == 429
    for _ in range(3):
        assert client.get("/health").status_code == 200
        assert "X-RateLimit-Limit" not in client.get("/health").headers
        assert client.get("/static/no-such-file.js").status_code == 404


def test_a_valid_key_has_its_own_budget_and_an_invalid_one_counts_as_the_ip(make_app):
    client = limited_app(make_app, 2, REQUIRE_API_KEY="true", VALID_API_KEYS="alice,bob").test_client()
    for _ in range(2):
        assert client.get("/api/chat/models", headers={"x-api-key": "alice"}).status_code == 200
    assert client.get("/api/chat/models", headers={"x-api-key": "alice"}).status_code == 429
    # bob and the anonymous IP are untouched by alice's use...
    assert client.get("/api/chat/models", headers={"Authorization": "Bearer bob"}).status_code == 200
    assert client.get("/api/info").status_code == 200
    # ...and guessing keys spends the IP's budget, so it cannot be used to brute-force keys.
    assert client.get("/api/chat/models", headers={"x-api-key": "mallory"}).status_code == 401
    assert_rate_limited(client.get("/api/chat/models", headers={"x-api-key": "mallory-2"}), 2)


def test_an_upstream_429_keeps_the_upstreams_retry_after(make_app):
    client = limited_app(make_app, 10).test_client()
    response = client.post("/api/chat/completion",
                           json={"message": "sim:status=429 sim:type=rate_limit_reached_error sim:retry_after=42"})
    assert response.status_code == 429
    assert response.get_json()["code"] == "upstream_rate_limited"
    assert response.headers["Retry-After"] == "42"
    assert response.headers["X-RateLimit-Remaining"] == "9"


def unreachable_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_fail_closed_answers_503_when_the_storage_is_unreachable(make_app):
    client = limited_app(make_app, 5, RATE_LIMIT_STORAGE_URI=unreachable_redis(), RATE_LIMIT_FAIL_OPEN="false").test_client()
    response = client.get("/api/chat/models")
    assert response.status_code == 503
    assert response.get_json()["code"] == "rate_limit_unavailable"
    assert response.headers["Retry-After"].isdigit()
    assert client.get("/health").status_code == 200


def test_fail_open_falls_back_to_in_memory_limits(make_app):
    client = limited_app(make_app, 2, RATE_LIMIT_STORAGE_URI=unreachable_redis()).test_client()
    assert [client.get("/api/chat/models").status_code for _ in range(3)] == [200, 200, 429]


def test_each_app_gets_its_own_outage_behaviour(make_app):
    # flask-limiter's stock init_app keeps the first app's fallback switch and outage state.
    storage = unreachable_redis()
    fail_open = limited_app(make_app, 5, RATE_LIMIT_STORAGE_URI=storage).test_client()
    assert fail_open.get("/api/chat/models").status_code == 200
    fail_closed = limited_app(make_app, 5, RATE_LIMIT_STORAGE_URI=storage, RATE_LIMIT_FAIL_OPEN="false").test_client()
    assert fail_closed.get("/api/chat/models").status_code == 503
    fresh = limited_app(make_app, 5).test_client()
    assert fresh.get("/api/chat/models").headers["X-RateLimit-Remaining"] == "4"


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_fail_open_setting_is_validated(make_app, value):
    from kimi_backend.config.parsers import ConfigError
    with pytest.raises(ConfigError, match="^RATE_LIMIT_FAIL_OPEN"):
        make_app(RATE_LIMIT_FAIL_OPEN=value)


def test_the_overridden_flask_limiter_members_are_unchanged(app):
    # AppLimiter replaces flask-limiter's private per-request check and resets private state in
    # init_app (kimi_backend/ratelimit.py): a flask-limiter that renames or reshapes these must
    # fail here rather than leave requests uncounted or apps sharing an outage state.
    from flask_limiter import Limiter

    from kimi_backend.extensions import limiter
    from kimi_backend.ratelimit import AppLimiter

    expected = ["self", "callable_name", "in_middleware"]
    assert list(inspect.signature(Limiter._check_request_limit).parameters) == expected
    assert inspect.signature(AppLimiter._check_request_limit) == inspect.signature(Limiter._check_request_limit)
    assert list(inspect.signature(Limiter.init_app).parameters) == ["self", "app"]
    # flask-limiter's init_app registers the check as a before_request hook: ours is what runs.
    assert limiter._check_request_limit in app.before_request_funcs[None]
    for name in ("_in_memory_fallback_enabled", "_storage_options", "_storage_dead", "_key_prefix"):
        assert name in vars(limiter), f"flask-limiter no longer keeps {name}"
    # Its after_request and teardown hooks, which only its own check needs, are taken off (they
    # built its per-request context on every request): under these names, and no other hook
    # of flask-limiter's is left.
    assert callable(Limiter._Limiter__inject_headers) and callable(Limiter._Limiter__release_context)
    hooks = app.after_request_funcs[None] + app.teardown_request_funcs[None]
    assert not [hook for hook in hooks
                if "flask_limiter" in getattr(getattr(hook, "func", hook), "__module__", "")], hooks


def test_memory_limits_count_in_our_memory_storage(app):
    from kimi_backend.extensions import limiter
    from kimi_backend.memory_counts import MemoryCounts
    assert type(limiter.limiter.storage) is MemoryCounts


@pytest.mark.parametrize("greenlets_only", [False, True], ids=["threads", "greenlets"])
def test_our_memory_storage_counts_exactly_as_the_stock_one(greenlets_only):
    """The same increments (new counters, repeated ones, negative amounts as budgets give back,
    counters that expire at once) give the same values in both, with the per-counter lock
    (threads) and without it (under gevent)."""
    from limits.storage import MemoryStorage
    from kimi_backend.memory_counts import MemoryCounts
    ours, stock = MemoryCounts(), MemoryStorage()
    ours.greenlets_only = greenlets_only
    steps = [("a", 60, 1), ("a", 60, 1), ("b", 60, 5), ("a", 60, -2), ("b", 0, 3), ("b", 60, 1), ("c", 0, 1),
             ("c", 0, 1), ("a", 60, 10), ("b", 60, -4), ("b", 60, 4), ("d", 60, 0), ("d", 60, 2)]
    assert [ours.incr(*step) for step in steps] == [stock.incr(*step) for step in steps]
    assert [ours.get(key) for key in "abcd"] == [stock.get(key) for key in "abcd"]


@pytest.mark.parametrize("greenlets_only", [False, True], ids=["threads", "greenlets"])
def test_our_memory_storage_increments_several_counters_in_one_call_as_one_at_a_time(greenlets_only):
    """`incr_each` (a request's token budgets) gives what the stock storage's `incr` of each
    counter in turn gives, repeated, new and expiring counters alike."""
    from limits.storage import MemoryStorage
    from kimi_backend.memory_counts import MemoryCounts
    ours, stock = MemoryCounts(), MemoryStorage()
    ours.greenlets_only = greenlets_only
    steps = [(("a", "b"), 60, 5), (("a",), 60, 1), (("b", "c"), 0, 3), (("c", "a"), 60, -2), (("b", "c", "d"), 60, 1),
             (("d", "d"), 60, 4), ((), 60, 1)]
    for keys, expiry, amount in steps:
        assert ours.incr_each(keys, expiry, amount) == [stock.incr(key, expiry, amount) for key in keys]
    assert [ours.get(key) for key in "abcd"] == [stock.get(key) for key in "abcd"]


def test_adding_to_live_counters_gives_what_incr_gives_and_keeps_their_expiry():
    """`add_to_live` (a budget's settlement) on counters an `incr_each` just made or renewed:
    the stock `incr`'s values, and the expiry the reservation set (not moved on)."""
    from limits.storage import MemoryStorage
    from kimi_backend.memory_counts import MemoryCounts
    ours, stock = MemoryCounts(), MemoryStorage()
    ours.greenlets_only = True
    for keys, amount in ((("a", "b"), 50), (("a",), 7), (("b", "a"), 30)):
        assert ours.incr_each(keys, 60, amount) == [stock.incr(key, 60, amount) for key in keys]
        expiries = [ours.expirations[key] for key in keys]
        assert ours.add_to_live(keys, -amount + 3) == [stock.incr(key, 60, -amount + 3) for key in keys]
        assert [ours.expirations[key] for key in keys] == expiries
    assert [ours.get(key) for key in "ab"] == [stock.get(key) for key in "ab"] == [9, 6]


def test_our_memory_storage_takes_no_lock_only_under_gevent():
    # Under gevent nothing in an increment can switch greenlets; with threads it must lock.
    probe = ("import kimi_backend.memory_counts as m; s = m.MemoryCounts(); s.incr('k', 60); "
             "print(s.greenlets_only, 'k' in s.locks)")
    for prelude, expected in (("from gevent import monkey; monkey.patch_all(); ", "True False"), ("", "False True")):
        out = subprocess.run([sys.executable, "-c", prelude + probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.stdout.strip() == expected, out.stderr


def test_our_memory_storage_starts_no_timer_and_sweeps_expired_counters():
    from kimi_backend.memory_counts import MemoryCounts
    storage = MemoryCounts()
    storage.timer.join()  # the stock constructor's own one-off timer
    storage.incr("gone", 0)
    storage.sweep_every_s = 0.0
    storage.incr("kept", 60)
    assert not storage.timer.is_alive(), "an increment started a timer"
    assert "gone" not in storage.storage and "gone" not in storage.expirations
    assert storage.get("kept") == 1
