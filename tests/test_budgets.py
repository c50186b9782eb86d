"""Daily token budgets, in one process (memory storage) against the simulator: reserve before
the upstream call, settle to the upstream's usage after, refuse with 429 for that budget only,
charge a cut stream, and reset at the UTC day boundary (an injected clock)."""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from flask import g
from sqlalchemy import select

from kimi_backend.config import load_settings
from kimi_backend.config.parsers import ConfigError, key_id
from kimi_backend.usage import budgets as budgets_module
from kimi_backend.usage import estimate
from kimi_backend.usage.schema import usage

KEY_A, KEY_B = "client-key-a", "client-key-b"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def budget_app(make_app, tmp_path):
    """`budget_app(**settings)`: an app with its own ledger file and a hand-moved clock
    (`app.clock`), starting at 2026-11-30 22:00 UTC."""
    def build(**overrides):
        app = make_app(USAGE_DATABASE_URL=f"sqlite:///{tmp_path}/usage.sqlite3", USAGE_FLUSH_INTERVAL_S="0.01",
                       VALID_API_KEYS=f"{KEY_A},{KEY_B}", **overrides)
        app.clock = Clock(datetime(2026, 11, 30, 22, 0, tzinfo=timezone.utc))
        app.extensions["token_budgets"].clock = app.clock
        return app
    return build


def ledger_rows(app) -> list:
    """Every ledger row written so far, oldest first (after the queue is flushed)."""
    ledger = app.extensions["usage_ledger"]
    ledger.flush()
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(usage).order_by(usage.c.id)).mappings())


def ask(client, key: str | None = None, message: str = "hi", **body):
    """A completion as `key`; without reasoning unless asked, so each reply's cost is its text's."""
    headers = {"x-api-key": key} if key else {}
    return client.post("/api/chat/completion", json={"message": message, "thinking": False, **body}, headers=headers)


def reservation(message: str, max_tokens: int) -> int:
    """What a one-message completion reserves: the prompt estimate plus its max_tokens."""
    return estimate.prompt_tokens({"messages": [{"role": "user", "content": message}]}) + max_tokens


def test_a_client_over_its_budget_gets_429_and_other_clients_do_not(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="100")
    client = app.test_client()
    spent = last = 0
    while True:
        response = ask(client, KEY_A, max_tokens=20)
        if response.status_code != 200:
            break
        last = response.get_json()["data"]["usage"]["total_tokens"]
        spent += last
        assert response.headers["X-Budget-Remaining"] == str(100 - spent)
    # Refused exactly when the next reservation no longer fits (and the one before it did).
    assert spent + reservation("hi", 20) > 100 >= spent - last + reservation("hi", 20)
    assert response.status_code == 429
    body = response.get_json()
    assert body["success"] is False and body["code"] == "token_budget_exceeded"
    assert body["error"].startswith("Your daily token budget is used up")
    assert f"{100 - spent} of 100 are left today" in body["error"]
    assert "2026-12-01T00:00:00Z" in body["error"] and "in 2 h 0 min" in body["error"]
    assert response.headers["Retry-After"] == str(2 * 3600)
    assert response.headers["X-Budget-Remaining"] == str(100 - spent)
    # Another client, and the same client with a smaller request, still fit.
    assert ask(client, KEY_B, max_tokens=20).status_code == 200
    assert ask(client, KEY_A, max_tokens=1).status_code == 200


@pytest.mark.parametrize("greenlets_only", [False, True], ids=["threads", "greenlets"])
def test_the_budget_counts_the_upstreams_usage_and_the_ledger_matches(budget_app, simulator, greenlets_only, monkeypatch):
    from kimi_backend.extensions import limiter
    app = budget_app(TOKEN_BUDGET_PER_DAY="100000")
    # Under gevent the memory store settles with `add_to_live` (no expiry checks), with
    # threads with `incr_each`: the same figures either way.
    monkeypatch.setattr(limiter.limiter.storage, "greenlets_only", greenlets_only)
    client = app.test_client()
    replies = [ask(client, KEY_A, "hello there").get_json()["data"],
               ask(client, KEY_A, "sim:cached=3 again, with a cache").get_json()["data"],
               client.post("/api/chat/history", headers={"x-api-key": KEY_A}, json={"messages": [
                   {"role": "user", "content": "一"}, {"role": "assistant", "content": "二"},
                   {"role": "user", "content": "三"}]}).get_json()["data"]]
    upstream_total = sum(reply["usage"]["total_tokens"] for reply in replies)
    response = ask(client, KEY_A, max_tokens=5)
    used_before = 100000 - int(response.headers["X-Budget-Remaining"]) - response.get_json()["data"]["usage"]["total_tokens"]
    assert used_before == upstream_total
    rows = ledger_rows(app)
    assert [row["total_tokens"] for row in rows[:3]] == [reply["usage"]["total_tokens"] for reply in replies]
    assert [row["prompt_tokens"] for row in rows[:3]] == [reply["usage"]["prompt_tokens"] for reply in replies]
    assert [row["completion_tokens"] for row in rows[:3]] == [reply["usage"]["completion_tokens"] for reply in replies]
    # Cached tokens are recorded beside the prompt tokens they are part of, not added again.
    assert replies[1]["usage"]["cached_tokens"] == 3 and rows[1]["cached_tokens"] == 3
    assert rows[1]["total_tokens"] == rows[1]["prompt_tokens"] + rows[1]["completion_tokens"]
    assert {row["estimated"] for row in rows} == {False}
    assert [row["route"] for row in rows] == ["/api/chat/completion"] * 2 + ["/api/chat/history", "/api/chat/completion"]
    assert {row["client"] for row in rows} == {f"key:{key_id(KEY_A)}"}
    assert all(KEY_A not in json.dumps(dict(row), default=str) for row in rows)


def test_the_reservation_includes_max_tokens_or_the_default_output_reserve(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="1000", TOKEN_BUDGET_OUTPUT_RESERVE="2000")
    client = app.test_client()
    # Without max_tokens the default reserve (2000) cannot fit in 1000; with it, it does.
    refused = ask(client, KEY_A)
    assert refused.status_code == 429
    assert f"may need up to {reservation('hi', 2000)} tokens" in refused.get_json()["error"]
    assert "lower its max_tokens" in refused.get_json()["error"]
    assert ask(client, KEY_A, max_tokens=900).status_code == 200
    assert ask(client, KEY_A, max_tokens=1000).status_code == 429


def test_per_key_budgets_from_token_budgets_and_from_the_key_file(budget_app, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"{KEY_B} budget=30\nclient-key-c\n")
    app = budget_app(TOKEN_BUDGET_PER_DAY="1000", TOKEN_BUDGETS=f"{key_id(KEY_A)}:40", VALID_API_KEYS_FILE=str(key_file))
    client = app.test_client()
    assert ask(client, KEY_A, max_tokens=20).headers["X-Budget-Remaining"] == "28"
    assert ask(client, KEY_A, max_tokens=30).status_code == 429  # 12 spent + 35 reserved > 40
    assert ask(client, KEY_B, max_tokens=30).status_code == 429
    assert ask(client, KEY_B, max_tokens=10).headers["X-Budget-Remaining"] == "18"
    assert ask(client, "client-key-c", max_tokens=20).headers["X-Budget-Remaining"] == "988"
    assert ask(client, None, max_tokens=20).headers["X-Budget-Remaining"] == "988"


def test_the_service_ceiling_refuses_everyone_once_reached(budget_app):
    app = budget_app(TOKEN_BUDGET_TOTAL_PER_DAY="60")
    client = app.test_client()
    assert ask(client, KEY_A, max_tokens=20).status_code == 200
    assert ask(client, KEY_B, max_tokens=20).status_code == 200
    assert ask(client, KEY_A, max_tokens=20).status_code == 200
    refused = [ask(client, key, max_tokens=20) for key in (KEY_A, KEY_B, None)]
    assert [r.status_code for r in refused] == [429, 429, 429]
    assert refused[0].get_json()["error"].startswith("This service's daily token budget is used up")
    # No per-client budget is set, so there is no budget of the caller's own to report.
    assert "X-Budget-Remaining" not in refused[0].headers


def test_a_refusal_gives_back_what_other_budgets_had_reserved(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="1000", TOKEN_BUDGET_TOTAL_PER_DAY="50")
    client = app.test_client()
    refused = ask(client, KEY_A, max_tokens=100)
    assert refused.status_code == 429  # the service ceiling refuses
    assert refused.get_json()["error"].startswith("This service's daily token budget is used up")
    # The client budget's reservation was returned: all 1000 are still there.
    assert refused.headers["X-Budget-Remaining"] == "1000"
    assert ask(client, KEY_A, max_tokens=20).headers["X-Budget-Remaining"] == "988"


def test_a_tokens_own_budget_applies_on_top(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="1000")

    @app.before_request
    def token_holder():  # what issue 14's browser tokens do for a token with a token_budget claim
        g.token_budget = 30

    client = app.test_client()
    response = ask(client, KEY_A, max_tokens=10)
    assert response.headers["X-Budget-Remaining"] == "18"  # the smaller of the caller's own budgets
    refused = ask(client, KEY_A, max_tokens=20)
    assert refused.status_code == 429
    assert refused.get_json()["error"].startswith("This token's daily budget is used up")


def test_budgets_reset_at_the_utc_day_boundary(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="40")
    client = app.test_client()
    assert ask(client, KEY_A, max_tokens=20).status_code == 200
    assert ask(client, KEY_A, max_tokens=20).status_code == 200  # 12 spent, 24 after it
    app.clock.now = datetime(2026, 11, 30, 23, 59, 30, tzinfo=timezone.utc)
    refused = ask(client, KEY_A, max_tokens=20)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    app.clock.now += timedelta(seconds=30)  # midnight, UTC
    fresh = ask(client, KEY_A, max_tokens=20)
    assert fresh.status_code == 200
    assert fresh.headers["X-Budget-Remaining"] == str(40 - fresh.get_json()["data"]["usage"]["total_tokens"])
    days = [(row["day"].isoformat(), row["status"]) for row in ledger_rows(app)]
    assert days == [("2026-11-30", 200), ("2026-11-30", 200), ("2026-11-30", 429), ("2026-12-01", 200)]


def test_the_budgets_kept_listed_per_client_are_bounded_and_counted_apart(budget_app, monkeypatch):
    monkeypatch.setattr(budgets_module, "LISTS_KEPT", 3)
    app = budget_app(TOKEN_BUDGET_PER_DAY="30", TOKEN_BUDGET_TOTAL_PER_DAY="100000")
    budgets = app.extensions["token_budgets"]
    client = app.test_client()
    for round_ in range(2):
        for address in range(5):
            response = client.post("/api/chat/completion", json={"message": "hi", "thinking": False, "max_tokens": 20},
                                   environ_base={"REMOTE_ADDR": f"10.0.0.{address}"})
            # Each address its own budget: the first request of each fits, its second does not.
            assert response.status_code == (200 if round_ == 0 else 429), (round_, address)
            assert len(budgets._today.lists) <= 3
    assert [budget.scope for budget in budgets.applicable("ip:10.0.0.9", app.clock().date(), None)] == ["client", "service"]


def test_an_upstream_error_costs_nothing(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="1000", UPSTREAM_MAX_RETRIES="0")
    client = app.test_client()
    assert ask(client, KEY_A, "sim:status=400", max_tokens=20).status_code == 400
    assert ask(client, KEY_A, max_tokens=20).headers["X-Budget-Remaining"] == "988"
    rows = ledger_rows(app)
    assert (rows[0]["status"], rows[0]["outcome"], rows[0]["total_tokens"]) == (400, "upstream_rejected", 0)


def read_until_content(response) -> str:
    """Reads a streamed test response until its first content event; returns that text."""
    for block in response.response:
        for line in block.decode().splitlines():
            if line.startswith("data: ") and json.loads(line[6:]).get("content"):
                return json.loads(line[6:])["content"]
    raise AssertionError("the stream ended before any content")


def test_a_stream_cut_before_its_usage_is_charged_an_estimate_never_zero(budget_app, simulator):
    app = budget_app(TOKEN_BUDGET_PER_DAY="100000")
    client = app.test_client()
    message = "a long story sim:chunks=50 sim:interval=0.05"
    response = client.post("/api/chat/stream", json={"messages": message, "thinking": False}, headers={"x-api-key": KEY_A},
                           buffered=False)
    assert response.status_code == 200
    received = read_until_content(response)
    response.close()  # the client goes away, long before the usage chunk
    row = ledger_rows(app)[0]
    expected = estimate.prompt_tokens({"messages": [{"role": "user", "content": message}]}) + \
        math.ceil(len(received.encode()) / 3)
    assert row["total_tokens"] == expected > 0
    assert (row["stream"], row["cut_short"], row["estimated"], row["outcome"]) == (True, True, True, "client_closed")
    assert simulator.stats()["streams_completed"] == 0
    remaining = int(ask(app.test_client(), KEY_A, max_tokens=1).headers["X-Budget-Remaining"])
    assert remaining < 100000 - expected


def test_a_stream_cut_after_its_usage_arrived_is_charged_that_usage(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="100000")
    response = app.test_client().post("/api/chat/stream", json={"messages": "hi sim:no_done"},
                                      headers={"x-api-key": KEY_A})
    events = [json.loads(line[6:]) for line in response.get_data(as_text=True).splitlines()
              if line.startswith("data: {")]
    assert events[-1]["code"] == "upstream_incomplete"
    row = ledger_rows(app)[0]
    assert (row["cut_short"], row["estimated"], row["outcome"]) == (True, False, "upstream_incomplete")
    # The simulator's count: 14 characters / 4, plus 3 for the message.
    assert row["prompt_tokens"] == 6 and row["completion_tokens"] > 0


def test_a_whole_stream_is_charged_its_usage(budget_app):
    app = budget_app(TOKEN_BUDGET_PER_DAY="100000")
    response = app.test_client().post("/api/chat/stream", json={"messages": "讲个故事", "max_tokens": 50},
                                      headers={"x-api-key": KEY_A})
    # Sent with the headers: what is left after the stream's reservation.
    assert response.headers["X-Budget-Remaining"] == str(100000 - reservation("讲个故事", 50))
    usage_event = [json.loads(line[6:]) for line in response.get_data(as_text=True).splitlines()
                   if line.startswith("data: {")][-1]["usage"]
    row = ledger_rows(app)[0]
    assert (row["total_tokens"], row["cut_short"], row["estimated"]) == (usage_event["total_tokens"], False, False)


def test_api_info_says_whether_budgets_are_on(budget_app):
    off = budget_app().test_client().get("/api/info").get_json()["data"]["budgets"]
    assert off == {"enabled": False, "perClientPerDay": None, "totalPerDay": None}
    on = budget_app(TOKEN_BUDGET_PER_DAY="5000", TOKEN_BUDGET_TOTAL_PER_DAY="90000").test_client().get("/api/info")
    assert on.get_json()["data"]["budgets"] == {"enabled": True, "perClientPerDay": 5000, "totalPerDay": 90000}


def test_without_budgets_chat_responses_carry_no_budget_header(budget_app):
    response = ask(budget_app().test_client(), KEY_A)
    assert response.status_code == 200 and "X-Budget-Remaining" not in response.headers


def test_the_budget_header_is_exposed_to_browsers(budget_app):
    response = ask(budget_app(TOKEN_BUDGET_PER_DAY="100").test_client(), KEY_A)
    assert "X-Budget-Remaining" in response.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("overrides,message", [
    ({"TOKEN_BUDGET_PER_DAY": "lots"}, "TOKEN_BUDGET_PER_DAY must be a whole number"),
    ({"TOKEN_BUDGET_TOTAL_PER_DAY": "0"}, "TOKEN_BUDGET_TOTAL_PER_DAY must be at least 1"),
    ({"TOKEN_BUDGETS": "client-key-a:100"}, "TOKEN_BUDGETS entries must be <key-id>:<tokens>"),
    ({"TOKEN_BUDGETS": "0123456789ab:many"}, "TOKEN_BUDGETS must be a whole number"),
    ({"TOKEN_BUDGET_OUTPUT_RESERVE": "-1"}, "TOKEN_BUDGET_OUTPUT_RESERVE must be at least 1"),
])
def test_bad_budget_settings_stop_startup_naming_the_variable(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({}, overrides)


def test_key_file_budgets_are_parsed_and_validated(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("k1 budget=500\nk2\n")
    settings = load_settings({}, {"VALID_API_KEYS_FILE": str(key_file), "TOKEN_BUDGETS": f"key:{key_id('k2')}:7"})
    assert settings.valid_api_keys == ("k1", "k2")
    assert dict(settings.token_budgets) == {key_id("k1"): 500, key_id("k2"): 7}
    key_file.write_text("k1 limit=500\n")
    with pytest.raises(ConfigError, match="VALID_API_KEYS_FILE: after a key only budget=<tokens> may follow"):
        load_settings({}, {"VALID_API_KEYS_FILE": str(key_file)})


def test_the_openai_surface_spends_and_is_refused_by_the_same_budget(budget_app, simulator):
    app = budget_app(TOKEN_BUDGET_PER_DAY="60")
    client = app.test_client()
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "thinking": False}
    first = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_A}"})
    assert first.status_code == 200
    spent = first.get_json()["usage"]["total_tokens"]
    assert first.headers["X-Budget-Remaining"] == str(60 - spent)
    while (response := client.post("/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {KEY_A}"})).status_code == 200:
        spent += response.get_json()["usage"]["total_tokens"]
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"]["code"] == "token_budget_exceeded"
    # The original routes see the same budget spent.
    assert ask(client, KEY_A, max_tokens=20).status_code == 429
    rows = ledger_rows(app)
    assert {row["route"] for row in rows} >= {"/v1/chat/completions"}
    assert sum(row["total_tokens"] for row in rows if row["status"] == 200) == spent


def test_a_cut_openai_stream_is_charged_too(budget_app, simulator):
    app = budget_app(TOKEN_BUDGET_PER_DAY="100000")
    response = app.test_client().post(
        "/v1/chat/completions", headers={"x-api-key": KEY_A}, buffered=False,
        json={"stream": True, "thinking": False,
              "messages": [{"role": "user", "content": "story sim:chunks=50 sim:interval=0.05"}]})
    for block in response.response:
        if b'"content":"[' in block or b'"content": "[' in block:
            break
    response.close()
    row = ledger_rows(app)[0]
    assert (row["route"], row["cut_short"], row["estimated"]) == ("/v1/chat/completions", True, True)
    assert row["total_tokens"] > estimate.prompt_tokens(
        {"messages": [{"role": "user", "content": "story sim:chunks=50 sim:interval=0.05"}]})


class _FailingOnCall:
    """Stands in for a storage's `incr_each`: counts as the real one, except that its call
    number `failing` for the budgets (the rate limit's counts pass) raises the storage error
    `limits` raises."""

    def __init__(self, real, failing: int):
        self.real, self.failing, self.calls = real, failing, 0

    def __call__(self, keys, expiry, amount=1):
        self.calls += all(key.startswith(budgets_module.KEY_PREFIX) for key in keys)
        if self.calls == self.failing:
            from limits.errors import StorageError
            raise StorageError(ConnectionError("the storage went away"))
        return self.real(keys, expiry, amount)


def test_a_storage_failure_when_reserving_refuses_with_503_and_reserves_nothing(budget_app, monkeypatch):
    from kimi_backend.extensions import limiter
    app = budget_app(TOKEN_BUDGET_PER_DAY="1000", TOKEN_BUDGET_TOTAL_PER_DAY="100000")
    client = app.test_client()
    storage = limiter.limiter.storage
    monkeypatch.setattr(storage, "incr_each", _FailingOnCall(storage.incr_each, failing=1), raising=False)
    refused = ask(client, KEY_A, max_tokens=100)
    assert refused.status_code == 503 and refused.get_json()["code"] == "rate_limit_unavailable"
    assert "Traceback" not in refused.get_data(as_text=True)
    # Nothing was reserved by the failed request: the whole budget is there for the next one.
    answered = ask(client, KEY_A, max_tokens=20)
    assert answered.status_code == 200
    assert int(answered.headers["X-Budget-Remaining"]) == 1000 - answered.get_json()["data"]["usage"]["total_tokens"]


def test_a_storage_failure_when_settling_is_logged_and_counted_and_the_reply_stands(budget_app, monkeypatch, caplog):
    from prometheus_client import REGISTRY
    from kimi_backend.extensions import limiter
    app = budget_app(TOKEN_BUDGET_PER_DAY="1000")
    client = app.test_client()
    storage = limiter.limiter.storage
    failures = REGISTRY.get_sample_value("kimi_token_budget_settle_failures_total") or 0.0
    monkeypatch.setattr(storage, "incr_each", _FailingOnCall(storage.incr_each, failing=2), raising=False)
    answered = ask(client, KEY_A, max_tokens=100)
    assert answered.status_code == 200 and answered.get_json()["success"] is True
    assert REGISTRY.get_sample_value("kimi_token_budget_settle_failures_total") == failures + 1
    assert "token budget not settled: its storage failed (ConnectionError)" in caplog.text
    # The reservation stays counted (the safe side): prompt estimate plus max_tokens.
    assert answered.headers["X-Budget-Remaining"] == str(1000 - reservation("hi", 100))


def test_reserving_follows_the_limiters_storage_when_it_changes():
    """What reserves and settles is worked out once per storage: when the limiter's storage
    changes (its in-memory fallback, and back), the next request counts in the new one."""
    from kimi_backend.memory_counts import MemoryCounts
    settings = load_settings({}, {"KIMI_API_KEY": "", "TOKEN_BUDGET_PER_DAY": "1000"})
    first, second = MemoryCounts(), MemoryCounts()
    current = [first]
    budgets = budgets_module.Budgets(settings, lambda: current[0])
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    budgets.reserve("ip:a", payload).settle(4)
    current[0] = second
    budgets.reserve("ip:a", payload).settle(5)
    key = budgets.applicable("ip:a", budgets.clock().date(), None)[0].key
    assert (first.get(key), second.get(key)) == (4, 5)


class _StorageWithoutIncrEach:
    """A storage with `incr` only (as Redis is), whose increment number `failing` fails."""

    def __init__(self, failing: int):
        self.counts: dict[str, int] = {}
        self.calls, self.failing = 0, failing

    def incr(self, key, expiry, amount=1):
        self.calls += 1
        if self.calls == self.failing:
            from limits.errors import StorageError
            raise StorageError(ConnectionError("the storage went away"))
        self.counts[key] = self.counts.get(key, 0) + amount
        return self.counts[key]


def test_incr_each_on_a_storage_of_incr_alone_takes_back_what_it_added_when_one_fails():
    from limits.errors import StorageError
    storage = _StorageWithoutIncrEach(failing=3)
    with pytest.raises(StorageError):
        budgets_module.incr_each(storage, ("client", "token", "service"), 60, 10)
    assert storage.counts == {"client": 0, "token": 0}
    assert budgets_module.incr_each(_StorageWithoutIncrEach(failing=0), ("a", "b"), 60, 7) == [7, 7]
