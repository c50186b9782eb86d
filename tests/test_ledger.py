"""The usage ledger, in SQLite and in a real PostgreSQL server started here: one row per chat
request with the upstream's figures, the admin report (`GET /api/usage`), the schema made at
startup, and failures (a full queue, an unreachable database) that never fail a request."""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import random
import sqlite3
import time
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import Boolean, Date, DateTime, create_engine, event, func, insert, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite

from kimi_backend import create_app
from kimi_backend.config import parsers
from kimi_backend.config.parsers import ConfigError, key_id
from kimi_backend.usage import ledger as ledger_module
from kimi_backend.usage.ledger import COLUMNS, Ledger, as_row, column_conversion
from kimi_backend.usage.schema import make_engine, migrate, schema_version, usage
from tests.conftest import base_config, close_app
from tests.helpers import wait_until
from tests.servers import PostgresServer

ADMIN_KEY = "admin-secret-for-tests"
KEY_A, KEY_B = "ledger-key-a", "ledger-key-b"


@pytest.fixture(scope="module")
def postgres():
    """One PostgreSQL server for this module (skipped without one, except under CI)."""
    server = PostgresServer()
    yield server
    server.remove()


def fresh_postgres_database(server: PostgresServer) -> str:
    """A new, empty database on `server`; its URL."""
    name = "usage_" + uuid.uuid4().hex[:12]
    engine = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The ledger's database, once as a SQLite file and once in PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/usage.sqlite3"
    return fresh_postgres_database(request.getfixturevalue("postgres"))


@pytest.fixture
def ledger_app(make_app, tmp_path):
    """`ledger_app(**settings)`: an app with an admin key, two client keys and a fast-flushing
    ledger in its own SQLite file unless USAGE_DATABASE_URL says otherwise."""
    def build(**overrides):
        settings = dict(USAGE_DATABASE_URL=f"sqlite:///{tmp_path}/usage.sqlite3", USAGE_FLUSH_INTERVAL_S="0.01",
                        VALID_API_KEYS=f"{KEY_A},{KEY_B}", ADMIN_API_KEY=ADMIN_KEY, UPSTREAM_MAX_RETRIES="0")
        settings.update(overrides)
        return make_app(**settings)
    return build


def rows_of(app) -> list[dict]:
    ledger = app.extensions["usage_ledger"]
    ledger.flush()
    with ledger.engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(usage).order_by(usage.c.id)).mappings()]


def report(client, **query):
    return client.get("/api/usage", query_string=query, headers={"x-admin-key": ADMIN_KEY})


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_chat_request_is_recorded_with_the_upstreams_figures(ledger_app, database_url, simulator, caplog):
    caplog.set_level(logging.INFO, logger="kimi_backend.access")
    app = ledger_app(USAGE_DATABASE_URL=database_url, TOKEN_BUDGET_PER_DAY="100000")
    client = app.test_client()
    reply = client.post("/api/chat/completion", json={"message": "hello", "model": "moonshot-v1-32k"},
                        headers={"x-api-key": KEY_A, "X-Request-ID": "req-one"}).get_json()["data"]
    stream = client.post("/api/chat/stream", json={"messages": "sim:cached=2 tell me more"}, headers={"x-api-key": KEY_B})
    stream_usage = [line for line in stream.get_data(as_text=True).splitlines() if '"usage"' in line]
    missing = client.post("/api/chat/completion", json={"message": "hi", "model": "no-such-model"})
    assert missing.status_code == 400

    first, second, third = rows_of(app)
    assert first["request_id"] == "req-one"
    assert first["client"] == f"key:{key_id(KEY_A)}"
    assert (first["route"], first["model_requested"], first["model_served"]) == \
        ("/api/chat/completion", "moonshot-v1-32k", reply["model"])
    assert (first["prompt_tokens"], first["completion_tokens"], first["total_tokens"]) == \
        (reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"], reply["usage"]["total_tokens"])
    assert (first["status"], first["outcome"], first["stream"], first["cut_short"], first["estimated"]) == \
        (200, "ok", False, False, False)
    assert first["duration_ms"] > 0 and first["day"] == datetime.now(timezone.utc).date()
    # The same duration as the request's access line.
    [line] = [record.fields for record in caplog.records
              if record.name == "kimi_backend.access" and record.fields["request_id"] == "req-one"]
    assert first["duration_ms"] == line["duration_ms"]
    assert second["client"] == f"key:{key_id(KEY_B)}" and second["route"] == "/api/chat/stream"
    assert (second["stream"], second["cut_short"], second["cached_tokens"]) == (True, False, 2)
    assert f'"total_tokens":{second["total_tokens"]}' in stream_usage[0].replace(" ", "")
    assert third["client"] == "ip:127.0.0.1"
    assert (third["status"], third["outcome"], third["model_served"], third["total_tokens"]) == \
        (400, "model_not_found", None, 0)


def test_admin_report_groups_by_client_model_and_day(ledger_app, database_url):
    app = ledger_app(USAGE_DATABASE_URL=database_url)
    clock = app.extensions["token_budgets"]
    client = app.test_client()
    sent = []
    for day, key, model in [(28, KEY_A, "kimi-k2.6"), (29, KEY_A, "kimi-k2.7-code"), (29, KEY_B, "kimi-k2.6"),
                            (30, KEY_B, "kimi-k2.6")]:
        clock.clock = lambda day=day: datetime(2026, 11, day, 12, tzinfo=timezone.utc)
        body = client.post("/api/chat/completion", json={"message": f"day {day}", "model": model},
                           headers={"x-api-key": key}).get_json()["data"]
        sent.append((day, key, model, body["usage"]["total_tokens"]))
    rows_of(app)

    by_client = report(client, group_by="client").get_json()
    assert by_client["success"] is True
    expected = {f"key:{key_id(k)}": sum(t for _, key, _, t in sent if key == k) for k in (KEY_A, KEY_B)}
    assert {row["client"]: row["total_tokens"] for row in by_client["data"]} == expected
    assert {row["client"]: row["requests"] for row in by_client["data"]} == {name: 2 for name in expected}
    by_model = {row["model"]: row for row in report(client, group_by="model").get_json()["data"]}
    assert by_model["kimi-k2.6"]["requests"] == 3 and by_model["kimi-k2.7-code"]["requests"] == 1
    by_day = report(client, group_by="day", **{"from": "2026-11-29", "to": "2026-11-30"}).get_json()["data"]
    assert [(row["day"], row["requests"]) for row in by_day] == [("2026-11-29", 2), ("2026-11-30", 1)]
    assert by_day[0]["total_tokens"] == sent[1][3] + sent[2][3]
    assert by_day[0]["prompt_tokens"] + by_day[0]["completion_tokens"] == by_day[0]["total_tokens"]

    response = report(client, group_by="day", format="csv")
    assert response.mimetype == "text/csv"
    assert 'filename="kimi-usage-by-day.csv"' in response.headers["Content-Disposition"]
    table = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert table[0] == ["day", "requests", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens"]
    assert [row[:2] for row in table[1:]] == [["2026-11-28", "1"], ["2026-11-29", "2"], ["2026-11-30", "1"]]


def test_admin_report_needs_the_admin_key(ledger_app):
    client = ledger_app().test_client()
    missing = client.get("/api/usage")
    assert (missing.status_code, missing.get_json()["code"]) == (401, "missing_admin_key")
    wrong = client.get("/api/usage", headers={"x-admin-key": "guess"})
    assert (wrong.status_code, wrong.get_json()["code"]) == (401, "invalid_admin_key")
    assert client.get("/api/usage", headers={"x-admin-key": KEY_A}).status_code == 401
    assert report(client).get_json() == {"success": True, "data": []}
    disabled = ledger_app(ADMIN_API_KEY="").test_client().get("/api/usage", headers={"x-admin-key": ADMIN_KEY})
    assert (disabled.status_code, disabled.get_json()["code"]) == (404, "not_found")


@pytest.mark.parametrize("query,message", [
    ({"group_by": "week"}, "Query parameter 'group_by' is invalid"),
    ({"from": "yesterday"}, "Query parameter 'from' is invalid"),
    ({"from": "2026-11-30", "to": "2026-11-01"}, "'from' must not be after 'to'"),
    ({"format": "xml"}, "Query parameter 'format' is invalid"),
    ({"limit": "5"}, "Query parameter 'limit' is invalid"),
])
def test_bad_report_queries_are_400_naming_the_parameter(ledger_app, query, message):
    response = report(ledger_app().test_client(), **query)
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request" and message in response.get_json()["error"]


def test_csv_cells_never_start_a_formula(ledger_app):
    app = ledger_app()
    client = app.test_client()
    assert client.post("/api/chat/completion", json={"message": "x", "model": "=HYPERLINK(1)"}).status_code == 400
    rows_of(app)
    table = list(csv.reader(io.StringIO(report(client, group_by="model", format="csv").get_data(as_text=True))))
    assert table[1][0] == "'=HYPERLINK(1)"


def test_with_the_ledger_off_nothing_is_written_and_budgets_still_count(ledger_app, tmp_path):
    app = ledger_app(USAGE_LEDGER="false", USAGE_DATABASE_URL=f"sqlite:///{tmp_path}/off.sqlite3",
                     TOKEN_BUDGET_PER_DAY="1000")
    client = app.test_client()
    response = client.post("/api/chat/completion", json={"message": "hi", "max_tokens": 20, "thinking": False})
    assert response.status_code == 200 and response.headers["X-Budget-Remaining"] == "988"
    assert not (tmp_path / "off.sqlite3").exists()
    disabled = report(client)
    assert (disabled.status_code, disabled.get_json()["code"]) == (404, "usage_ledger_disabled")


def test_a_version_1_database_loses_its_client_day_index(database_url):
    engine = make_engine(parsers.database_url("USAGE_DATABASE_URL", database_url))
    try:
        migrate(engine)
        with engine.begin() as conn:  # the database as version 1 left it
            conn.execute(text("CREATE INDEX kimi_usage_client_day ON kimi_usage (client, day)"))
            conn.execute(schema_version.delete().where(schema_version.c.version > 1))
        assert "kimi_usage_client_day" in {index["name"] for index in inspect(engine).get_indexes("kimi_usage")}
        assert migrate(engine) == 2
        assert {index["name"] for index in inspect(engine).get_indexes("kimi_usage")} == {"kimi_usage_day"}
    finally:
        engine.dispose()


def test_the_schema_is_created_at_startup_once(simulator_server, database_url):
    apps = [create_app(base_config(simulator_server, USAGE_DATABASE_URL=database_url)) for _ in range(2)]
    try:
        with apps[-1].extensions["usage_ledger"].engine.connect() as conn:
            assert [row.version for row in conn.execute(select(schema_version))] == [1, 2]
            assert conn.execute(select(usage)).all() == []
    finally:
        for app in apps:
            close_app(app)


@pytest.mark.parametrize("url,reason", [
    ("sqlite:////nonexistent-dir/usage.sqlite3", "unable to open database file"),
    ("postgresql://kimi:secret-password@127.0.0.1:1/usage", "Connection refused"),
])
def test_an_unreachable_database_stops_startup_with_one_sentence(simulator_server, url, reason):
    with pytest.raises(ConfigError) as failure:
        create_app(base_config(simulator_server, USAGE_DATABASE_URL=url))
    message = str(failure.value)
    assert message.startswith("USAGE_DATABASE_URL: the usage database ") and "cannot be opened" in message
    assert reason in message and "\n" not in message and "secret-password" not in message


def test_a_full_queue_is_logged_and_counted_and_never_fails_a_request(ledger_app, tmp_path, caplog):
    app = ledger_app(USAGE_QUEUE_SIZE="1", USAGE_FLUSH_INTERVAL_S="0.001")
    client = app.test_client()
    assert client.post("/api/chat/completion", json={"message": "warm up"}).status_code == 200
    rows_of(app)
    lost_before = metric("kimi_usage_ledger_rows_total", result="lost_queue_full")
    blocker = sqlite3.connect(tmp_path / "usage.sqlite3", timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer now waits on the database
    try:
        statuses = [client.post("/api/chat/completion", json={"message": f"n{i}"}).status_code for i in range(5)]
        lost = metric("kimi_usage_ledger_rows_total", result="lost_queue_full") - lost_before
    finally:
        blocker.rollback()
        blocker.close()
    assert statuses == [200] * 5
    # The writer holds what it gathered before it met the lock, the queue one more; the rest is lost.
    assert lost >= 2
    assert "usage ledger queue is full (USAGE_QUEUE_SIZE=1)" in caplog.text
    assert len(rows_of(app)) == 1 + 5 - lost


def test_a_database_failure_at_run_time_is_logged_and_counted(ledger_app, postgres, caplog):
    url = fresh_postgres_database(postgres)
    app = ledger_app(USAGE_DATABASE_URL=url)
    client = app.test_client()
    assert client.post("/api/chat/completion", json={"message": "before"}).status_code == 200
    assert len(rows_of(app)) == 1
    errors_before = metric("kimi_usage_ledger_write_errors_total")
    lost_before = metric("kimi_usage_ledger_rows_total", result="lost_write_failed")
    postgres.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="kimi_backend"):
            assert client.post("/api/chat/completion", json={"message": "during"}).status_code == 200
            app.extensions["usage_ledger"].flush()
    finally:
        postgres.start()
    assert metric("kimi_usage_ledger_write_errors_total") - errors_before == 4  # the first try and three retries
    assert metric("kimi_usage_ledger_rows_total", result="lost_write_failed") - lost_before == 1
    assert "usage ledger: 1 rows lost, the database failed" in caplog.text
    # Once the database is back, rows are written again.
    assert client.post("/api/chat/completion", json={"message": "after"}).status_code == 200
    assert [row["status"] for row in rows_of(app)] == [200, 200]


def ledger_row(i: int) -> dict:
    """A row's values by column name (`as_row` makes the row)."""
    now = datetime.now(timezone.utc)
    return {"at": now, "day": now.date(), "request_id": f"r{i}", "client": "ip:127.0.0.1",
            "route": "/api/chat/completion", "model_requested": None, "model_served": "kimi-k2.6",
            "prompt_tokens": 3, "completion_tokens": 2, "cached_tokens": 0, "total_tokens": 5,
            "estimated": False, "status": 200, "outcome": "ok", "duration_ms": 1.0, "stream": False,
            "cut_short": False}


def count_rows(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(usage)).scalar_one()
    finally:
        engine.dispose()


def a_ledger(tmp_path, queue_size: int) -> tuple[Ledger, str]:
    url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    engine = make_engine(url)
    migrate(engine)
    return Ledger(engine, queue_size=queue_size, flush_interval_s=30), url


def test_the_writer_wakes_once_per_batch_not_once_per_row(tmp_path):
    # Rows gather in the queue while the writer sleeps; a wake-up per row woke it for every
    # chat request. Closing wakes a gathering writer at once (here, 30 s before its flush).
    ledger, url = a_ledger(tmp_path, queue_size=1000)
    waits = []
    real_wait = ledger._wake.wait

    def counting_wait(timeout=None):
        waits.append(timeout)
        return real_wait(timeout)
    ledger._wake.wait = counting_wait
    for i in range(200):
        ledger.record(as_row(ledger_row(i)))
    began = time.monotonic()
    ledger.close()
    assert time.monotonic() - began < 10
    assert len(waits) <= 2  # for the first row, and while the rest gather
    assert count_rows(url) == 200


def test_flush_writes_what_is_queued_without_waiting_out_the_flush_interval(tmp_path):
    ledger, url = a_ledger(tmp_path, queue_size=1000)  # rows gather for 30 s
    try:
        for round_ in range(3):
            for i in range(5):
                ledger.record(as_row(ledger_row(round_ * 5 + i)))
            began = time.monotonic()
            assert ledger.flush(timeout_s=10)
            assert time.monotonic() - began < 10
            assert count_rows(url) == 5 * (round_ + 1)
    finally:
        ledger.close()


def test_a_batch_that_cannot_be_written_does_not_stop_the_writer(tmp_path, caplog):
    # Not a database failure (those are retried): something in our own code. The batch is lost,
    # logged and counted; the writer goes on with the next rows.
    ledger, url = a_ledger(tmp_path, queue_size=1000)
    real = ledger._insert.statements
    calls = []

    def failing_once(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise KeyError("day")
        return real(rows)
    ledger._insert.statements = failing_once
    lost_before = metric("kimi_usage_ledger_rows_total", result="lost_write_failed")
    try:
        for i in range(3):
            ledger.record(as_row(ledger_row(i)))
        assert ledger.flush(timeout_s=10)
        assert count_rows(url) == 0
        assert metric("kimi_usage_ledger_rows_total", result="lost_write_failed") - lost_before == 3
        assert "3 rows lost" in caplog.text
        for i in range(3, 5):
            ledger.record(as_row(ledger_row(i)))
        assert ledger.flush(timeout_s=10)
        assert count_rows(url) == 2
    finally:
        ledger.close()


def test_a_half_full_queue_is_written_without_waiting_for_the_flush(tmp_path):
    # A small USAGE_QUEUE_SIZE must not overflow while the writer sleeps out its 30 s.
    ledger, url = a_ledger(tmp_path, queue_size=10)
    try:
        for i in range(5):
            ledger.record(as_row(ledger_row(i)))
        wait_until(lambda: count_rows(url) == 5, timeout=10)
    finally:
        ledger.close()


def stored(engine_url: str) -> list[tuple]:
    """Every row of the ledger's table as SQLite holds it: each value and its storage class."""
    path = engine_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = [row[1] for row in conn.execute("PRAGMA table_info(kimi_usage)") if row[1] != "id"]
        picks = ", ".join(f"{name}, typeof({name})" for name in names)
        return conn.execute(f"SELECT {picks} FROM kimi_usage ORDER BY id").fetchall()


def core_stored(tmp_path, rows: list[tuple]) -> list[tuple]:
    """What SQLAlchemy Core's own insert of `rows` stores, in a database of its own."""
    url = f"sqlite:///{tmp_path / f'core-{uuid.uuid4().hex}.sqlite3'}"
    core = make_engine(url)
    migrate(core)
    with core.begin() as conn:
        conn.execute(insert(usage), [dict(zip(COLUMNS, row)) for row in rows])
    core.dispose()
    return stored(url)


def inserts_of(ledger: Ledger) -> list[tuple[str, bool]]:
    """The INSERT statements `ledger` sends from now on, each with whether it is an executemany."""
    statements = []
    event.listen(ledger.engine, "before_cursor_execute",
                 lambda conn, cursor, sql, parameters, context, many: statements.append((sql, many)))
    return statements


def test_a_sqlite_batch_goes_out_as_a_few_multi_row_inserts_storing_what_core_would(tmp_path):
    # One executemany let the driver drop and retake the GIL once per row, each time taken back
    # from the busy event loop's thread (33-68 µs of the writer's CPU per request under load).
    ledger, url = a_ledger(tmp_path, queue_size=1000)
    statements = inserts_of(ledger)
    rows = [as_row(dict(ledger_row(i), client=f"sub:訪客-{i % 7}", model_requested=None if i % 2 else "moonshot-v1-8k",
                        estimated=bool(i % 3), cut_short=i % 5 == 0, duration_ms=i / 3)) for i in range(150)]
    for row in rows:
        ledger.record(row)
    ledger.close()
    inserts = [(sql, many) for sql, many in statements if sql.startswith("INSERT")]
    assert len(inserts) == 3 and not any(many for _, many in inserts)  # 64 + 64 + 22 rows
    assert stored(url) == core_stored(tmp_path, rows)


def a_loop_ledger(tmp_path) -> tuple[Ledger, str, list[str], list[list]]:
    """A SQLite ledger that writes as it does under gevent (`Ledger._send`): what it would hand
    to gevent's thread pool runs in its writer thread here and is listed by name; each time it
    opens its own connection, that connection's settings are listed."""
    ledger, url = a_ledger(tmp_path, queue_size=1000)
    ledger._gevent_sqlite = True
    pooled, opened = [], []

    def in_thread_pool(function, *args):
        pooled.append(function.__name__)
        function(*args)

    def opening(real=ledger._open_loop_connection):
        connection = real()
        opened.append([connection.execute(f"PRAGMA {name}").fetchone()[0]
                       for name in ("busy_timeout", "wal_autocheckpoint", "journal_mode", "synchronous")])
        return connection
    ledger._in_thread_pool, ledger._open_loop_connection = in_thread_pool, opening
    return ledger, url, pooled, opened


def test_under_gevent_sqlite_batches_go_through_the_writers_own_connection_that_never_waits(tmp_path):
    # Each batch through gevent's thread pool cost the event loop's thread more than the insert.
    ledger, url, pooled, opened = a_loop_ledger(tmp_path)
    rows = [as_row(dict(ledger_row(i), client=f"sub:訪客-{i % 7}", estimated=bool(i % 3), duration_ms=i / 3))
            for i in range(150)]
    for batch in (rows[:70], rows[70:]):
        for row in batch:
            ledger.record(row)
        assert ledger.flush(timeout_s=10)
    ledger.close()
    assert pooled == []
    assert opened == [[0, 0, "wal", 1]]  # opened once; no waiting, no checkpoint; synchronous=NORMAL
    assert ledger._loop_connection is None  # closed with the ledger
    assert stored(url) == core_stored(tmp_path, rows)


def test_a_batch_that_finds_the_write_lock_taken_is_written_from_the_thread_pool(tmp_path, caplog):
    # Another worker's writer holds the lock: the event loop must not wait for it.
    ledger, url, pooled, _ = a_loop_ledger(tmp_path)
    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    ledger._in_thread_pool = lambda function, *args: (pooled.append(function.__name__), holder.rollback(), function(*args))
    lost_before = metric("kimi_usage_ledger_rows_total", result="lost_write_failed")
    try:
        for i in range(3):
            ledger.record(as_row(ledger_row(i)))
        assert ledger.flush(timeout_s=10)
    finally:
        ledger.close()
        holder.close()
    assert pooled == ["_execute"]
    assert count_rows(url) == 3
    assert metric("kimi_usage_ledger_rows_total", result="lost_write_failed") == lost_before
    assert "failed" not in caplog.text


def test_the_wal_is_checkpointed_from_the_thread_pool_every_so_many_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "CHECKPOINT_EVERY_ROWS", 100)
    ledger, url, pooled, _ = a_loop_ledger(tmp_path)
    database = url.removeprefix("sqlite:///")
    try:
        for i in range(60):
            ledger.record(as_row(ledger_row(i)))
        assert ledger.flush(timeout_s=10)
        size = os.path.getsize(database)  # the rows are in the WAL alone
        assert pooled == []
        for i in range(60, 120):
            ledger.record(as_row(ledger_row(i)))
        assert ledger.flush(timeout_s=10)
        assert pooled == ["_run_checkpoint"]
        assert os.path.getsize(database) > size  # copied into the database file
        for i in range(120, 180):
            ledger.record(as_row(ledger_row(i)))
        assert ledger.flush(timeout_s=10)
        assert pooled == ["_run_checkpoint"]  # counted afresh from the checkpoint
    finally:
        ledger.close()
    assert count_rows(url) == 180


def test_a_failed_batch_on_the_writers_connection_leaves_nothing_half_written(tmp_path):
    # The lone surrogate fails the batch after its first row went in: that row must not be in
    # twice once the batch goes again (the connection is dropped, its transaction with it).
    ledger, url, pooled, opened = a_loop_ledger(tmp_path)
    try:
        ledger.record(as_row(ledger_row(0)))
        ledger.record(as_row(dict(ledger_row(1), model_served="kimi-\udc80")))
        assert ledger.flush(timeout_s=10)
    finally:
        ledger.close()
    assert count_rows(url) == 2
    assert len(opened) == 2 and pooled == []


# Any text but a lone surrogate, which JSON intake refuses (see the test after).
LEDGER_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
LEDGER_ROWS = st.lists(st.tuples(
    # Naive, or aware at any fixed offset (no time-zone database needed).
    st.datetimes(min_value=datetime(1, 1, 1, 0, 0, 1), timezones=st.one_of(st.none(), st.timedeltas(
        min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)).map(timezone))),
    st.dates(), LEDGER_TEXT, LEDGER_TEXT, LEDGER_TEXT, st.one_of(st.none(), LEDGER_TEXT), st.one_of(st.none(), LEDGER_TEXT),
    *[st.integers(0, 2**53)] * 4, st.booleans(), st.integers(100, 599), LEDGER_TEXT,
    st.floats(0, 10**12, allow_nan=False), st.booleans(), st.booleans()), min_size=1, max_size=70)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=LEDGER_ROWS)
def test_any_rows_are_stored_as_core_stores_them(tmp_path, rows):
    # A row is a tuple in COLUMNS order: a value in the wrong place, or converted otherwise
    # than SQLAlchemy converts it, shows here.
    directory = tmp_path / uuid.uuid4().hex
    directory.mkdir()
    ledger, url = a_ledger(directory, queue_size=1000)
    for row in rows:
        ledger.record(row)
    ledger.close()
    assert stored(url) == core_stored(directory, rows)


def test_a_text_no_driver_can_encode_is_stored_made_valid_and_costs_no_other_row(database_url, tmp_path):
    # A lone surrogate failed the whole batch. No input brings one today (JSON intake refuses
    # them, a reply's model id must look like one): this is the guard should one ever come.
    engine = make_engine(parsers.database_url("USAGE_DATABASE_URL", database_url))
    migrate(engine)
    ledger = Ledger(engine, queue_size=1000, flush_interval_s=30)
    lost_before = metric("kimi_usage_ledger_rows_total", result="lost_write_failed")
    try:
        ledger.record(as_row(ledger_row(0)))
        ledger.record(as_row(dict(ledger_row(1), model_served="kimi-\udc80", model_requested="\ud83d\ude00")))
        assert ledger.flush(timeout_s=10)
        with engine.connect() as conn:
            served = conn.execute(select(usage.c.model_served, usage.c.model_requested).order_by(usage.c.id)).all()
    finally:
        ledger.close()
    assert served == [("kimi-k2.6", None), ("kimi-\ufffd", "😀")]
    assert metric("kimi_usage_ledger_rows_total", result="lost_write_failed") == lost_before


def test_dates_times_and_booleans_are_bound_as_sqlalchemys_own_processors_bind_them():
    dialect = sqlite.dialect()
    rng = random.Random(13)
    for column_type, make in ((DateTime(timezone=True), random_datetime), (Date(), lambda r: random_datetime(r).date())):
        impl = column_type.dialect_impl(dialect)
        ours, stock = column_conversion(impl, dialect), impl.bind_processor(dialect)
        assert stock is not None
        values = [make(rng) for _ in range(3000)]
        assert list(ours(values)) == [stock(value) for value in values]
    # A batch's values in order, each second's and day's text made once (a batch is a second
    # or so of requests): many values share them, and the same moment in other zones does not.
    moment = datetime(2026, 12, 5, 23, 59, 59, 999_999, tzinfo=timezone.utc)
    close = [moment + timedelta(microseconds=rng.randrange(-3_000_000, 3_000_000)) for _ in range(2000)]
    close += [moment.astimezone(timezone(timedelta(hours=hours))) for hours in (-5, 0, 9)]
    for column_type, values in ((DateTime(timezone=True), close), (Date(), [value.date() for value in close] + close)):
        impl = column_type.dialect_impl(dialect)
        stock = [impl.bind_processor(dialect)(value) for value in values]
        assert list(column_conversion(impl, dialect)(values)) == stock
        assert list(column_conversion(impl, dialect)(iter(values))) == stock  # an iterator, read once
    with pytest.raises(AttributeError):  # a date where a DATETIME goes (SQLAlchemy's would store its midnight)
        list(column_conversion(DateTime().dialect_impl(dialect), dialect)([date(2026, 12, 5)]))
    for dialect_of_its_own in (sqlite.dialect(), postgresql.dialect()):
        ours, stock = column_conversion(Boolean(), dialect_of_its_own), Boolean().bind_processor(dialect_of_its_own)
        values = [True, False, None, 0, 1, 1.0]
        converted = list(ours(values))
        assert converted == [stock(value) for value in values]
        assert [type(value) for value in converted] == [type(stock(value)) for value in values]
        for value in (2, -1, "yes", 0.5):
            with pytest.raises(Exception):
                stock(value)
            with pytest.raises(Exception):
                list(ours([value]))
    for other in (sqlite.DATETIME(truncate_microseconds=True), sqlite.DATE(storage_format="%(year)04d/%(month)02d/%(day)02d"),
                  sqlite.TIME()):  # a format of its own, another type: SQLAlchemy's processor, value by value
        ours = column_conversion(other, dialect)
        assert ours.func is map and ours.args[0].__qualname__ == other.bind_processor(dialect).__qualname__


def test_rows_of_the_wrong_width_are_refused_not_cut(tmp_path):
    ledger, _ = a_ledger(tmp_path, queue_size=10)
    try:
        good = as_row(ledger_row(0))
        for rows in ([good[:-1]], [good, good[:-1]], [good + (1,)], [good, good + (1,)], [good + (1,), good], []):
            with pytest.raises(ValueError):
                ledger._insert.statements(rows)
        # A column's conversion that gave fewer values than it was given: refused, not every
        # row cut to that many.
        plan = ledger._insert._plan
        ledger._insert._plan = [(index, lambda values: list(values)[:-1]) if index == 0 else (index, convert)
                                for index, convert in plan]
        with pytest.raises(ValueError):
            ledger._insert.statements([good, good])
    finally:
        ledger.close()


def random_datetime(rng: random.Random) -> datetime:
    zone = rng.choice([timezone.utc, None, timezone(timedelta(hours=rng.randint(-12, 14)))])
    moment = datetime(1, 1, 1) + timedelta(seconds=rng.randrange(0, 315_537_897_599), microseconds=rng.choice([0, rng.randrange(1_000_000)]))
    return moment.replace(tzinfo=zone)
