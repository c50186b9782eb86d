"""The host-shared counter store: a `limits` storage (`sqlite:///path/counts.sqlite3`) that
every worker process of one host opens, so rate limits, token budgets, revocations and
anonymous-session counts are exact across workers without Redis.

Each counter is one row (its value and when it expires) of a small SQLite database in WAL
mode. An increment is one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` statement, which
SQLite runs as its own write transaction, so concurrent increments from any number of
processes never lose a count (`incr_each` adds to several counters in one such statement).
Writers take turns on an flock of `<file>.lock` first: SQLite's
own wait for a busy database sleeps 1, 2, 5, 10... ms, and a gevent worker sleeping there
stalls all its requests, while the flock waits only for the other writer's few microseconds
(with two busy workers, p99 of an increment 0.2 ms instead of 1.3 ms). gunicorn.conf.py puts the database in a private directory on
tmpfs when `memory://` meets several workers; losing counts on a host crash is acceptable
for limits, so commits are not synced (`synchronous=OFF`).
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Callable
from urllib.parse import urlparse

from limits.errors import StorageError
from limits.storage import Storage

from .config.parsers import ConfigError
from .sqlite_wal import use_wal

SCHEME = "sqlite"
# How long a worker waits for another's write before the call is a storage error (and
# RATE_LIMIT_FAIL_OPEN decides); a write holds the lock for microseconds.
BUSY_TIMEOUT_S = 1.0
# How often a worker deletes expired counters, so clients seen once do not accumulate.
PURGE_EVERY_S = 60.0

_SCHEMA = ("CREATE TABLE IF NOT EXISTS counts "
           "(key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL) WITHOUT ROWID")


def _increment_sql(count: int) -> str:
    """The statement adding ?{count+1} to the counters ?1..?{count} (`now` ?{count+2}, `expiry`
    ?{count+3}), returning each one's key and new value. An expired counter starts afresh with
    this increment and a new expiry, as in Redis."""
    amount, now, expiry = f"?{count + 1}", f"?{count + 2}", f"?{count + 3}"
    rows = ", ".join(f"(?{number}, {amount}, {now} + {expiry})" for number in range(1, count + 1))
    return (f"INSERT INTO counts (key, value, expires) VALUES {rows} "
            "ON CONFLICT (key) DO UPDATE SET "
            f"value = CASE WHEN expires > {now} THEN value + {amount} ELSE {amount} END, "
            f"expires = CASE WHEN expires > {now} THEN expires ELSE {now} + {expiry} END "
            "RETURNING key, value")


_INCREMENT = _increment_sql(1)


class SharedCountsStorage(Storage):
    """Fixed-window counters in a SQLite file shared by the processes of one host. `clock`
    (epoch seconds) is what expiry is measured against; tests replace it to move time."""

    STORAGE_SCHEME = [SCHEME]
    base_exceptions = (sqlite3.Error, OSError)

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options):
        self.clock: Callable[[], float] = time.time
        # One connection per process; gthread workers share it between threads.
        self._lock = threading.Lock()
        self._connection, self._writers_turn = _open(urlparse(uri).path)
        self._purged_at = self.clock()
        self._statements: dict[int, str] = {}  # incr_each's, by number of counters
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Adds `amount` to the counter and returns its new value; a missing or expired
        counter starts at `amount` and expires `expiry` seconds from now."""
        now = self.clock()
        return self._increment(_INCREMENT, (key, amount, now, expiry), now)[0][1]

    def incr_each(self, keys, expiry: int, amount: int = 1) -> list[int]:
        """`incr` of each of several distinct counters, in one statement (one write transaction,
        one turn of the writers' lock): all of them or, on an error (a `StorageError` when
        `limits` wraps this storage's errors), none. A request's token budgets are reserved
        and settled this way: for two, 11.0 µs of CPU against 16.3 µs for two `incr`."""
        if len(set(keys)) != len(keys):
            raise ValueError("incr_each takes distinct counters")
        if not keys:
            return []
        statement = self._statements.get(len(keys))
        if statement is None:
            statement = self._statements[len(keys)] = _increment_sql(len(keys))
        now = self.clock()
        try:
            counts = dict(self._increment(statement, (*keys, amount, now, expiry), now))
        except self.base_exceptions as exc:
            if self.wrap_exceptions:  # as `limits` does for the methods it knows
                raise StorageError(exc) from exc
            raise
        return [counts[key] for key in keys]

    def _increment(self, statement: str, parameters: tuple, now: float) -> list[tuple[str, int]]:
        """Runs an increment statement in the writers' turn: its (key, value) rows. Now and
        then (every PURGE_EVERY_S) deletes the expired counters first."""
        with self._lock:
            if now - self._purged_at >= PURGE_EVERY_S:
                self._purged_at = now
                self._connection.execute("DELETE FROM counts WHERE expires <= ?", (now,))
            fcntl.flock(self._writers_turn, fcntl.LOCK_EX)
            try:
                return self._connection.execute(statement, parameters).fetchall()
            finally:
                fcntl.flock(self._writers_turn, fcntl.LOCK_UN)

    def get(self, key: str) -> int:
        """The counter's value, 0 when missing or expired."""
        row = self._select("value", key)
        return 0 if row is None else row[0]

    def get_expiry(self, key: str) -> float:
        """When the counter expires (epoch seconds); now when it is missing or expired."""
        row = self._select("expires", key)
        return self.clock() if row is None else row[0]

    def _select(self, column: str, key: str) -> tuple | None:
        with self._lock:
            return self._connection.execute(f"SELECT {column} FROM counts WHERE key = ? AND expires > ?",
                                            (key, self.clock())).fetchone()

    def check(self) -> bool:
        """Whether the database answers."""
        try:
            with self._lock:
                self._connection.execute("SELECT COUNT(*) FROM counts WHERE 0").fetchone()
            return True
        except self.base_exceptions:
            return False

    def clear(self, key: str) -> None:
        """Removes one counter."""
        with self._lock:
            self._connection.execute("DELETE FROM counts WHERE key = ?", (key,))

    def reset(self) -> int | None:
        """Removes every counter; returns how many there were."""
        with self._lock:
            return self._connection.execute("DELETE FROM counts").rowcount


def _open(path: str) -> tuple[sqlite3.Connection, int]:
    """A connection in autocommit mode (each statement its own transaction) with the table in
    place, and the writers' lock file; a location that cannot hold them stops startup with
    one sentence."""
    if not path:
        raise ConfigError(f"RATE_LIMIT_STORAGE_URI: a {SCHEME}:// store must name its file, "
                          f"as in {SCHEME}:///dev/shm/kimi/counts.sqlite3.")
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        use_wal(connection, BUSY_TIMEOUT_S)
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute(_SCHEMA)
        writers_turn = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except sqlite3.Error as exc:
        raise ConfigError(f"RATE_LIMIT_STORAGE_URI: the shared counts database {path} cannot be opened ({exc}).") from None
    except OSError as exc:
        raise ConfigError(f"RATE_LIMIT_STORAGE_URI: the shared counts database {path} cannot be opened "
                          f"({exc.strerror}).") from None
    return connection, writers_turn
