"""Workers of one host starting together open the same new SQLite files (the usage ledger, the
shared counts) at the same moment: none may fail to start because the other was switching the
file to WAL mode (SQLite answers that `database is locked` at once, without its busy wait)."""
from __future__ import annotations

import multiprocessing
import os
import traceback

import pytest

from kimi_backend.shared_counts import SharedCountsStorage
from kimi_backend.usage.schema import make_engine, migrate

# Before kimi_backend/sqlite_wal.py, two processes opening one new file failed in about one
# round in five; forty rounds let that through with a chance of about 1 in 7,000.
ROUNDS = 40
PROCESSES = 2


def open_ledger(path: str) -> None:
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
    finally:
        engine.dispose()


def open_counts(path: str) -> None:
    SharedCountsStorage(f"sqlite://{path}").incr("k", 60)


def _open_together(opener, path, barrier, results) -> None:
    barrier.wait()
    try:
        opener(path)
        results.put("ok")
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        results.put(traceback.format_exc())


@pytest.mark.parametrize("opener", [open_ledger, open_counts])
def test_processes_opening_one_new_database_together_all_start(tmp_path, opener):
    context = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        path = os.path.join(tmp_path, f"{round_}.sqlite3")
        barrier, results = context.Barrier(PROCESSES), context.Queue()
        processes = [context.Process(target=_open_together, args=(opener, path, barrier, results))
                     for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(10)
        failures = [outcome for outcome in outcomes if outcome != "ok"]
        assert not failures, f"round {round_}: {failures[0]}"
