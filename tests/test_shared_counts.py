"""The host-shared counter store (kimi_backend/shared_counts.py) in one test process: two
connections see one count, increments from several processes at once are exact, expiry on an
injected clock, a bad location stops startup in one sentence, and storage errors follow
RATE_LIMIT_FAIL_OPEN."""
from __future__ import annotations

import fcntl
import multiprocessing
import threading

import pytest
from limits.errors import StorageError

from kimi_backend import create_app
from kimi_backend.config.parsers import ConfigError
from kimi_backend.extensions import limiter
from kimi_backend.shared_counts import PURGE_EVERY_S, SharedCountsStorage
from tests.helpers import LONG_WINDOW_MS

T0 = 1_800_000_000.0


def open_store(path, clock_at: float = T0) -> SharedCountsStorage:
    """A store on `path` whose clock stands at `clock_at` until the test moves it."""
    store = SharedCountsStorage(f"sqlite://{path}", wrap_exceptions=True)
    store.clock = lambda: clock_at
    return store


def move_clock(store: SharedCountsStorage, to: float) -> None:
    store.clock = lambda: to


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "counts.sqlite3"


def test_two_connections_share_one_count(db_path):
    first, second = open_store(db_path), open_store(db_path)
    assert first.incr("k", 60) == 1
    assert second.incr("k", 60) == 2
    assert first.incr("k", 60, amount=25) == 27
    assert second.incr("k", 60, amount=-25) == 2
    assert (first.get("k"), second.get("missing")) == (2, 0)
    assert first.get_expiry("k") == second.get_expiry("k") == T0 + 60


def test_incr_each_adds_to_every_counter_in_one_statement_or_to_none(db_path):
    store, other = open_store(db_path), open_store(db_path)
    assert store.incr_each(["a", "b"], 60, 5) == [5, 5]
    assert store.incr_each(["a", "b", "c"], 60, -2) == [3, 3, -2]
    assert [other.get(key) for key in "abc"] == [3, 3, -2]
    with pytest.raises(StorageError):
        store.incr_each(["a", ("not", "a key")], 60, 1)  # the second cannot be bound: "a" is not counted
    assert other.get("a") == 3 and not store._connection.in_transaction
    assert store.incr_each(["a"], 60, 1) == [4] and store.incr_each([], 60, 1) == []
    with pytest.raises(ValueError):
        store.incr_each(["a", "a"], 60, 1)
    move_clock(store, T0 + 61)  # expired counters start afresh, as with incr
    assert store.incr_each(["a", "new", "b"], 60, 2) == [2, 2, 2]
    assert store.incr("a", 60) == 3


def test_a_counter_expires_on_the_store_clock(db_path):
    first, second = open_store(db_path), open_store(db_path)
    first.incr("k", 60, amount=5)
    move_clock(first, T0 + 59)
    assert first.incr("k", 60) == 6  # the window holds its first expiry
    assert first.get_expiry("k") == T0 + 60
    move_clock(first, T0 + 60)
    move_clock(second, T0 + 60)
    assert (second.get("k"), second.get_expiry("k")) == (0, T0 + 60)  # expired: now
    assert second.incr("k", 60) == 1  # a fresh window, with a fresh expiry
    assert first.get_expiry("k") == T0 + 120


def test_expired_counters_are_purged(db_path):
    store = open_store(db_path)
    for i in range(5):
        store.incr(f"old-{i}", 10)
    move_clock(store, T0 + PURGE_EVERY_S)
    store.incr("new", 10)
    assert [row[0] for row in store._connection.execute("SELECT key FROM counts")] == ["new"]


def test_clear_reset_and_check(db_path):
    store = open_store(db_path)
    store.incr("a", 60)
    store.incr("b", 60)
    store.clear("a")
    assert (store.get("a"), store.get("b")) == (0, 1)
    assert store.reset() == 1
    assert store.get("b") == 0
    assert store.check()


def test_an_increment_waits_for_the_writers_turn(db_path):
    store = open_store(db_path)
    counts: list[int] = []
    with open(f"{db_path}.lock") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # another writer's turn
        writer = threading.Thread(target=lambda: counts.append(store.incr("k", 60)))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive() and counts == []
        fcntl.flock(turn, fcntl.LOCK_UN)
    writer.join(10)
    assert counts == [1]


def _increment_many(path: str, times: int, each: bool, queue) -> None:
    store = SharedCountsStorage(f"sqlite://{path}")
    if each:  # two counters at a time, as a request's budgets
        queue.put([tuple(store.incr_each(["shared", "other"], 3600)) for _ in range(times)])
    else:
        queue.put([store.incr("shared", 3600) for _ in range(times)])


@pytest.mark.parametrize("each", [False, True], ids=["incr", "incr_each"])
def test_increments_from_several_processes_at_once_are_exact(db_path, each):
    SharedCountsStorage(f"sqlite://{db_path}")  # the table exists before the race starts
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_increment_many, args=(str(db_path), 400, each, queue)) for _ in range(4)]
    for process in processes:
        process.start()
    seen = [value for _ in processes for value in queue.get(timeout=60)]
    for process in processes:
        process.join(60)
    # Every increment saw a different count: none was lost or counted twice (and with
    # incr_each, both counters moved together: each step saw them equal).
    if each:
        assert all(shared == other for shared, other in seen)
        seen = [shared for shared, _ in seen]
    assert sorted(seen) == list(range(1, 1601))


@pytest.mark.parametrize("uri,where", [("sqlite:///no/such/directory/counts.sqlite3", "/no/such/directory"),
                                       ("sqlite://", "must name its file")])
def test_a_bad_location_stops_startup_in_one_sentence(uri, where):
    with pytest.raises(ConfigError) as error:
        create_app({"KIMI_OFFLINE": "1", "RATE_LIMIT_STORAGE_URI": uri})
    message = str(error.value)
    assert message.startswith("RATE_LIMIT_STORAGE_URI: ") and where in message
    assert message.count(". ") == 0 and message.endswith(".")


def _limited_app(db_path, **overrides):
    app = create_app({"KIMI_OFFLINE": "1", "RATE_LIMIT_STORAGE_URI": f"sqlite://{db_path}",
                      "RATE_LIMIT_MAX_REQUESTS": "3", "RATE_LIMIT_WINDOW_MS": LONG_WINDOW_MS, **overrides})
    return app, limiter.storage


def test_fail_open_counts_in_memory_while_the_store_fails(db_path, caplog):
    app, store = _limited_app(db_path)
    client = app.test_client()
    assert client.get("/api/info").status_code == 200
    store._connection.close()  # every call now raises sqlite3.ProgrammingError
    assert [client.get("/api/info").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert "falling back to in-memory storage" in caplog.text


def test_fail_closed_refuses_with_503_while_the_store_fails(db_path):
    app, store = _limited_app(db_path, RATE_LIMIT_FAIL_OPEN="false")
    client = app.test_client()
    assert client.get("/api/info").status_code == 200
    store._connection.close()
    response = client.get("/api/info")
    assert response.status_code == 503
    assert response.json["code"] == "rate_limit_unavailable" and "Retry-After" in response.headers
