"""SQLite's WAL mode, switched on safely when several processes open one new database at once
(the workers of one host starting together: the usage ledger's file, the shared counts)."""
from __future__ import annotations

import sqlite3
import time

RETRY_EVERY_S = 0.01


def use_wal(connection: sqlite3.Connection, timeout_s: float) -> None:
    """Puts the connection's database in WAL mode. Switching needs a moment of exclusive
    access, and while another process is switching or creating the same file SQLite answers
    `database is locked` at once, without waiting its busy timeout: that is retried until
    `timeout_s` has passed, then raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_EVERY_S)
