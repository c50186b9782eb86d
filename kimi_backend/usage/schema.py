"""The usage database: its one table, the engine for it (SQLite or PostgreSQL), and the
schema migrations that bring any older database up to date at startup."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import (BigInteger, Boolean, Column, Connection, Date, DateTime, Engine, Float, Index, Integer,
                        MetaData, String, Table, create_engine, event, func, insert, select, text)
from sqlalchemy.schema import CreateIndex, CreateTable

from ..sqlite_wal import use_wal

metadata = MetaData()

usage = Table(
    "kimi_usage", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, comment="when the request arrived (UTC)"),
    Column("day", Date, nullable=False, comment="its UTC day, the budgets' day"),
    Column("request_id", String(128), nullable=False),
    Column("client", String(256), nullable=False, comment="key:<key id>, sub:<token subject> or ip:<address>"),
    Column("route", String(128), nullable=False),
    Column("model_requested", String(128)),
    Column("model_served", String(128)),
    Column("prompt_tokens", Integer, nullable=False, comment="cached tokens included"),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False, comment="the part of prompt_tokens served from cache"),
    Column("total_tokens", Integer, nullable=False, comment="prompt + completion: what the budgets were charged"),
    Column("estimated", Boolean, nullable=False, comment="no usage from the upstream: the tokens are our estimate"),
    Column("status", Integer, nullable=False),
    Column("outcome", String(64), nullable=False, comment="ok, client_closed, or the error code"),
    Column("duration_ms", Float, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("cut_short", Boolean, nullable=False, comment="a stream that did not reach its end"),
    Index("kimi_usage_day", "day"),
)

schema_version = Table(
    "kimi_schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def _create_usage_table(conn: Connection) -> None:
    conn.execute(CreateTable(usage, if_not_exists=True))
    for index in usage.indexes:
        conn.execute(CreateIndex(index, if_not_exists=True))


def _drop_client_day_index(conn: Connection) -> None:
    # No query reads it (the report filters by day alone), and every row paid for it: adding
    # a row to an index on (client, day) took 40 % of the row's insert (2.4 of 6.1 µs).
    conn.execute(text("DROP INDEX IF EXISTS kimi_usage_client_day"))


# (version, step), in order. A later schema change is a new step here, never an edit of an old
# one. (Step 1 creates the indexes `usage` lists now; a later step drops one it once created.)
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _create_usage_table),
    (2, _drop_client_day_index),
]
# How long a SQLite connection waits for another process's write (or its switch to WAL).
SQLITE_TIMEOUT_S = 5.0
# Serialises migrations of several workers or hosts starting at once (PostgreSQL advisory lock).
_PG_LOCK_ID = 0x6B696D69


def make_engine(url: str) -> Engine:
    """An engine for the usage database. SQLite gets WAL (readers never block the writer,
    commits without an fsync each) and lets SQLAlchemy, not the driver, open transactions,
    so the migration's `BEGIN IMMEDIATE` can take the write lock before it reads."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        use_wal(dbapi_connection, SQLITE_TIMEOUT_S)
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("migrating") else "BEGIN")
    return engine


def migrate(engine: Engine) -> int:
    """Brings the database to the newest schema version, once even when several processes
    start together; returns that version."""
    with engine.connect() as conn:
        conn.execution_options(migrating=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
            conn.execute(CreateTable(schema_version, if_not_exists=True))
            current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
            for version, step in MIGRATIONS:
                if version > current:
                    step(conn)
                    conn.execute(insert(schema_version).values(version=version, applied_at=datetime.now(timezone.utc)))
                    current = version
    return current
