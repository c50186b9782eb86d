"""The usage ledger: one row per chat request, written off the request's path. Requests
put rows in a bounded in-process queue; one writer thread (a greenlet under gevent) inserts
them in batches. A full queue or a failing database is logged and counted, never felt by a
request; stopping the process writes whatever is still queued."""
from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import logging
import operator
import threading
import time
from collections.abc import Sequence
from datetime import date
from typing import Callable, Iterable

from sqlalchemy import Engine, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import sqltypes

from ..observability.metrics import LEDGER_ROWS, LEDGER_WRITE_ERRORS
from ..observability.access_log import Exchange
from ..system import gevent_patched
from .budgets import Charge
from .cost import Cost
from .schema import usage

log = logging.getLogger("kimi_backend")

BATCH_SIZE = 500
# SQLite: rows per INSERT statement of a batch (at 17 columns, 1,088 variables: far below
# SQLite's limit of 32,766).
ROWS_PER_STATEMENT = 64
# Pauses before the writer tries a failed batch again; after the last, the batch is lost.
RETRY_DELAYS_S = (0.2, 1.0, 3.0)
# At most one "queue full" warning per this many seconds (each lost row is still counted).
WARN_EVERY_S = 10.0
# SQLite under gevent: rows written on the event loop's thread between two WAL checkpoints,
# which then run in gevent's thread pool (about 1,000 WAL pages, SQLite's own automatic
# checkpoint, at 500-row batches of some 25 pages each).
CHECKPOINT_EVERY_ROWS = 20_000


class _FlushMark:
    """Put in the queue by `flush()`: set once every row queued before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


# A ledger row's values, in this order: a plain tuple (made and queued for every chat request,
# it costs less than a dict: no keys to hash, nothing to pick out again when it is written).
COLUMNS: tuple[str, ...] = tuple(column.name for column in usage.columns if column.name != "id")


def usage_row(exchange: Exchange, charge: Charge, cost: Cost) -> tuple:
    """The ledger row of a finished request: its values in COLUMNS order. (Its duration is
    the access line's, the same figure.)"""
    served = exchange.model if exchange.usage is not None else None
    streaming, outcome, started = exchange.streaming, exchange.outcome, charge.started
    return (started, started.date(), exchange.request_id[:128], charge.identity[:256], exchange.route[:128],
            (exchange.requested_model or "")[:128] or None, served and str(served)[:128],
            *cost, exchange.status, str(outcome or "error")[:64],  # cost: prompt, completion, cached, total, estimated
            exchange.duration_ms, streaming, streaming and outcome != "ok")


def as_row(fields: dict) -> tuple:
    """A row given as its values by column name, in COLUMNS order."""
    return tuple(fields[name] for name in COLUMNS)


# SQLite DATETIME's default storage format, "YYYY-MM-DD HH:MM:SS.ffffff": the time as the value
# reads, its offset dropped (SQLAlchemy's processor fills it from the value's fields).
_SECOND = operator.attrgetter("year", "month", "day", "hour", "minute", "second")
_MICROSECOND = operator.attrgetter("microsecond")


class _SecondPrefixes(dict):
    """One batch's "YYYY-MM-DD HH:MM:SS." texts by the fields they are made of: a batch's rows
    are a second or so of requests, so each text is made once and looked up for the others.
    (`datetime.isoformat` made the whole text for every row, in 0.78 µs, eight libc `sprintf`s
    and an offset; this is 0.35 µs.)"""

    def __missing__(self, second: tuple) -> str:
        text = self[second] = "%04d-%02d-%02d %02d:%02d:%02d." % second
        return text


def _sqlite_datetimes(values: Iterable) -> Iterable[str]:
    # `map`s over C functions: no Python call per value, except for a batch's first value of
    # each second. A date has no hour: refused (AttributeError), where SQLAlchemy's would store
    # its midnight; rows hold the datetime a request began.
    if not isinstance(values, Sequence):
        values = tuple(values)  # read twice below (an iterator would run out, and zip cut the rows)
    prefixes = _SecondPrefixes()
    return map(operator.mod, itertools.repeat("%s%06d"),
               zip(map(prefixes.__getitem__, map(_SECOND, values)), map(_MICROSECOND, values)))


class _DayTexts(dict):
    """One batch's "YYYY-MM-DD" texts by date: a batch's rows are of one day or two."""

    def __missing__(self, day: date) -> str:
        text = date.isoformat(day)  # for a datetime too: its own date's
        if type(day) is date:
            # Only dates are kept: a datetime can equal another that reads as another day
            # (the same moment in another zone), and a date never equals a datetime.
            self[day] = text
        return text


def _sqlite_dates(values: Iterable) -> Iterable[str]:
    return map(_DayTexts().__getitem__, values)


def column_conversion(impl, dialect) -> Callable[[Iterable], Iterable] | None:
    """How a column's values, a batch of them at a time, become what the driver takes: with the
    column type's bind processor as SQLAlchemy makes it (None: the driver converts), except for
    booleans, and for SQLite's DATETIME and DATE in their default storage formats, converted by
    C functions, with a Python call only for a batch's first value of each second or day, to
    the same values (tests/test_ledger.py compares them)."""
    stock = impl.bind_processor(dialect)
    if stock is None:
        return None
    if type(impl).bind_processor is sqltypes.Boolean.bind_processor:
        # None, True or False (or 0 and 1, equal to them) as the dialect stores them, looked up
        # rather than checked and converted in Python; anything else fails here too (KeyError).
        as_stored = bool if dialect.supports_native_boolean else int
        return functools.partial(map, {None: None, False: as_stored(False), True: as_stored(True)}.__getitem__)
    if isinstance(impl, sqlite.DATETIME) and impl._storage_format == sqlite.DATETIME._storage_format:
        return _sqlite_datetimes
    if isinstance(impl, sqlite.DATE) and impl._storage_format == sqlite.DATE._storage_format:
        return _sqlite_dates
    return functools.partial(map, stock)


class PreparedInsert:
    """The ledger's INSERT compiled once for the database's dialect, and each column's own
    conversion (after SQLAlchemy's bind processors). Sending ready driver parameters costs
    about half of what a Core `insert()` does per row (measured with SQLite on the busy build
    machine: about 20 against 35 µs), and every chat request pays it.

    A batch is converted a column at a time (`column_conversion`): the rows turned into
    columns, each converted with `map`, and back, all in C. The writer shares the GIL with the
    requests (under gevent it runs in their thread): a Python loop over each row's values was
    about 130 bytecode instructions a request, 0.7 % of what a chat request runs (counted with
    `sys.settrace` under wrk).

    With SQLite a batch goes out as INSERTs of up to ROWS_PER_STATEMENT rows each, not as one
    `executemany`: the driver lets go of the GIL around every statement it steps, and the
    writer, in a native thread, then waits to get it back from the busy event loop's thread,
    which is made to hand it over, once per row. Under wrk on the build machine the writer
    thread spent 33-68 µs of CPU per request that way, 3-11 µs this way; the insert alone, in
    one thread, is about 5 µs a row. PostgreSQL's driver sends an `executemany`
    as one pipeline and waits cooperatively under gevent."""

    def __init__(self, engine: Engine):
        # inline(): no RETURNING of the new ids, which nobody reads.
        compiled = insert(usage).inline().compile(dialect=engine.dialect, column_keys=list(COLUMNS))
        self.sql = str(compiled)
        names = compiled.positiontup if compiled.positional else list(COLUMNS)
        # For each of the statement's parameters in order: the row's value it takes, converted how.
        self._plan = [(COLUMNS.index(name), column_conversion(usage.c[name].type.dialect_impl(engine.dialect), engine.dialect))
                      for name in names]
        self._positional = compiled.positional
        self._names = names
        head, values = self.sql.rsplit(" VALUES ", 1)
        self._multi_row = engine.dialect.name == "sqlite" and self._positional and values.startswith("(")
        self._head, self._values = head + " VALUES ", values
        self._multi_sql: dict[int, str] = {}

    def parameters(self, rows: list[tuple]) -> Iterable[tuple]:
        """The rows' parameters in the statement's order, converted, a tuple a row."""
        try:
            columns = list(zip(*rows, strict=True))  # strict: rows of unequal width raise, not cut
        except ValueError:
            columns = []
        if len(columns) != len(COLUMNS):  # also no rows at all
            raise ValueError(f"ledger rows must have {len(COLUMNS)} values each")
        # strict again: a conversion that gave fewer values than it was given raises rather than
        # cutting every row short.
        return zip(*[columns[index] if convert is None else convert(columns[index]) for index, convert in self._plan],
                   strict=True)

    def statements(self, rows: list[tuple]) -> list[tuple[str, tuple | list]]:
        """The statements that insert `rows`, each with its driver parameters: a tuple for one
        multi-row INSERT (SQLite), or a list of rows' parameters for an `executemany`."""
        by_row = self.parameters(rows)
        if not self._multi_row:
            return [(self.sql, list(by_row) if self._positional else [dict(zip(self._names, row)) for row in by_row])]
        values = tuple(itertools.chain.from_iterable(by_row))
        width = len(self._names)
        statements = []
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            count = min(ROWS_PER_STATEMENT, len(rows) - start)
            sql = self._multi_sql.get(count)
            if sql is None:
                sql = self._multi_sql[count] = self._head + ", ".join([self._values] * count)
            statements.append((sql, values[start * width:(start + count) * width]))
        return statements


def valid_text_row(row: tuple) -> tuple:
    """The row with every text made valid Unicode: a lone UTF-16 surrogate, which no database
    driver can encode, becomes U+FFFD (a pair of them, the character they make)."""
    return tuple(value.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if isinstance(value, str) else value
                 for value in row)


class Ledger:
    """The queue and its writer for one usage database.

    The queue is a deque that requests append to, not a `queue.Queue`: its locks, condition
    and unfinished-task count were a dozen Python calls per request (counted with cProfile),
    for a writer that takes rows in batches anyway. Appending to a deque is atomic under the
    GIL, in threads as in greenlets; the writer sleeps on an event that the first row of a
    batch sets, then gathers rows until the queue is half full or the flush interval is over."""

    def __init__(self, engine: Engine, *, queue_size: int, flush_interval_s: float):
        self.engine = engine
        self._insert = PreparedInsert(engine)
        self._gevent_sqlite = engine.dialect.name == "sqlite" and gevent_patched()
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self._rows: collections.deque = collections.deque()
        self._writer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._warned_at = float("-inf")
        self._closed = False
        # Set by the first row queued (the writer sleeps until then), when the queue is half
        # full (or holds a batch: a small USAGE_QUEUE_SIZE is drained before it overflows), and
        # by flush() and close().
        self._wake = threading.Event()
        self._wake_at = max(1, min(BATCH_SIZE, queue_size // 2))
        self._marks = 0  # flush marks in the queue (a writer never gathers while one waits)
        self._marks_lock = threading.Lock()
        # SQLite under gevent: the writer's own connection (see `_send`), and the rows it
        # wrote since the last checkpoint.
        self._loop_connection = None
        self._unchecked_rows = 0
        # What a failed write raises: SQLAlchemy's errors, and the driver's own from that connection.
        self._database_errors = (SQLAlchemyError, engine.dialect.loaded_dbapi.Error)

    def record(self, row: tuple) -> None:
        """Queues a row (its values in COLUMNS order) for the writer; never blocks."""
        if self._writer is None:
            self._start_writer()
        rows = self._rows
        waiting = len(rows)
        if waiting >= self.queue_size:
            self._lose_row()
            return
        rows.append(row)
        if not waiting or waiting + 1 >= self._wake_at:  # >=: threads may append between our look and ours
            self._wake.set()

    def queued(self) -> int:
        """The rows waiting for the writer."""
        return sum(1 for item in list(self._rows) if not isinstance(item, _FlushMark))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Waits until every row queued so far is written (or given up on); False if that took
        longer than `timeout_s`."""
        if self._writer is None or not self._writer.is_alive():
            return True  # nothing queued yet, or closed: nothing more will be written
        mark = _FlushMark()
        with self._marks_lock:
            self._marks += 1
        self._rows.append(mark)
        self._wake.set()
        return mark.done.wait(timeout_s)

    def close(self, timeout_s: float = 20.0) -> None:
        """Writes what is queued and stops the writer (at exit; SIGTERM loses nothing queued)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._wake.set()
            self._writer.join(timeout_s)
            if self._writer.is_alive():
                log.error("usage ledger: the writer did not drain the queue in %.0f s; %d rows lost",
                          timeout_s, self.queued())
            else:
                self._close_loop_connection()
        self.engine.dispose()

    def _lose_row(self) -> None:
        LEDGER_ROWS.labels("lost_queue_full").inc()
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("usage ledger queue is full (USAGE_QUEUE_SIZE=%d): rows are being lost; "
                        "the database is too slow or unreachable", self.queue_size)

    def _start_writer(self) -> None:
        # Started on the first row rather than at startup: a process forked after create_app
        # (gunicorn --preload) then starts its own.
        with self._start_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="usage-ledger-writer", daemon=True)
                self._writer.start()

    def _run(self) -> None:
        while True:
            batch, marks = self._next_batch()
            if batch:
                try:
                    self._write(batch)
                except Exception:  # not the database (that is retried in _write): a bug must not stop the writer
                    LEDGER_ROWS.labels("lost_write_failed").inc(len(batch))
                    log.exception("usage ledger: %d rows lost, they could not be written", len(batch))
            for mark in marks:
                mark.done.set()
            if self._closed and not self._rows:
                return

    def _next_batch(self) -> tuple[list[tuple], list[_FlushMark]]:
        """Waits for a row, lets more gather for up to USAGE_FLUSH_INTERVAL_S or until the queue
        is half full (or holds a batch), then takes up to BATCH_SIZE rows, and the flush marks
        among them (a mark ends the batch, so that what came before it is written first)."""
        rows, wake = self._rows, self._wake
        # Cleared before each look at the queue, so that a row queued after the look sets it.
        while not rows and not self._closed:
            wake.clear()
            if not rows and not self._closed:
                wake.wait()
        # The rows gather in the queue while the writer sleeps: a wake-up per row woke the
        # writer for every chat request (under gevent a switch and a timer each, more CPU than
        # the row's insert). record() wakes it early when the queue fills up.
        wake.clear()
        if len(rows) < self._wake_at and not self._closed and not self._marks:
            wake.wait(self.flush_interval_s)
        ready = min(len(rows), BATCH_SIZE)
        if not self._marks:
            # No flush mark among the first `ready` items (flush() counts a mark before it
            # queues it, and they were counted first): all rows, popped in C, not one by one.
            return list(itertools.starmap(rows.popleft, itertools.repeat((), ready))), []
        batch: list[tuple] = []
        marks: list[_FlushMark] = []
        while rows and len(batch) < BATCH_SIZE:
            item = rows.popleft()
            if isinstance(item, _FlushMark):
                with self._marks_lock:
                    self._marks -= 1
                marks.append(item)
                break
            batch.append(item)
        return batch, marks

    def _write(self, batch: list[tuple]) -> None:
        statements = self._insert.statements(batch)
        for delay in (*RETRY_DELAYS_S, None):
            try:
                try:
                    self._send(statements, len(batch))
                except UnicodeEncodeError:
                    # A text the driver cannot encode (a lone surrogate) would fail the whole
                    # batch: it goes again with such texts made valid. No input reaches here with
                    # one today (JSON intake refuses them, a reply's model id must look like one,
                    # identities are checked): a guard, not looked for beforehand, which would
                    # cost every row's every text.
                    batch = [valid_text_row(row) for row in batch]
                    statements = self._insert.statements(batch)
                    self._send(statements, len(batch))
                LEDGER_ROWS.labels("written").inc(len(batch))
                break
            except self._database_errors as exc:
                LEDGER_WRITE_ERRORS.inc()
                reason = _failure_reason(exc)
                if delay is None or self._closed:
                    LEDGER_ROWS.labels("lost_write_failed").inc(len(batch))
                    log.error("usage ledger: %d rows lost, the database failed (%s)", len(batch), reason)
                    return
                log.warning("usage ledger: writing %d rows failed (%s); retrying in %.1f s", len(batch), reason, delay)
                time.sleep(delay)
        if self._unchecked_rows >= CHECKPOINT_EVERY_ROWS:
            self._checkpoint()

    def _send(self, statements: list[tuple[str, tuple | list]], rows: int) -> None:
        """Runs the statements (inserting `rows` rows) in one transaction.

        SQLite under gevent: on the event loop's thread, through a connection of the writer's
        own that never waits. With WAL and `synchronous=NORMAL` a commit hands its pages to the
        operating system and waits for no disk; the two things that could wait are kept off the
        loop: the write lock, when another worker holds it (this connection does not wait for
        it: the batch then goes to gevent's pool of native threads, whose connection does, up
        to 5 s), and the WAL checkpoint, which syncs the disk (never run by this connection:
        `_checkpoint` runs one in the pool every CHECKPOINT_EVERY_ROWS). Every batch went
        through the pool before: its thread takes the GIL from the busy event loop's thread
        after each statement the driver steps, across cores, and under wrk the worker spent
        9-11 µs more CPU a request that way in two runs of three (README, issue 13), more than
        the insert itself. PostgreSQL's driver waits cooperatively under gevent; elsewhere, and
        at exit, the batch is written directly."""
        if not self._gevent_sqlite or self._closed:
            self._execute(statements)
        elif self._execute_without_waiting(statements):
            self._unchecked_rows += rows
        else:
            self._in_thread_pool(self._execute, statements)

    def _execute(self, statements: list[tuple[str, tuple | list]]) -> None:
        with self.engine.begin() as conn:
            for sql, parameters in statements:
                conn.exec_driver_sql(sql, parameters)

    def _execute_without_waiting(self, statements: list[tuple[str, tuple | list]]) -> bool:
        """`_execute` through the writer's own SQLite connection, unless another connection holds
        the write lock: then nothing is written and the answer is False."""
        connection = self._loop_connection or self._open_loop_connection()
        try:
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock now, or fails at once
        except connection.OperationalError as exc:
            if "locked" in str(exc):
                return False
            self._close_loop_connection()
            raise
        try:
            for sql, parameters in statements:
                connection.execute(sql, parameters)
            connection.execute("COMMIT")
        except BaseException:
            self._close_loop_connection()  # its transaction rolled back with it
            raise
        return True

    def _open_loop_connection(self):
        """The writer's own SQLite connection (the driver's), set up as every connection of the
        engine (WAL, ...), then to never wait for the write lock and never checkpoint."""
        pooled = self.engine.raw_connection()
        connection = pooled.driver_connection
        pooled.detach()  # never handed to anyone else, with these settings; closed by `_close_loop_connection`
        connection.execute("PRAGMA busy_timeout = 0")
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        self._loop_connection = connection
        return connection

    def _close_loop_connection(self) -> None:
        connection, self._loop_connection = self._loop_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing, after a failure: nothing more to do
                connection.close()

    def _checkpoint(self) -> None:
        """Copies the WAL into the database file, in gevent's thread pool (it syncs the disk);
        a failure is logged, and the next batches try again."""
        self._unchecked_rows = 0
        try:
            self._in_thread_pool(self._run_checkpoint)
        except SQLAlchemyError as exc:
            log.warning("usage ledger: WAL checkpoint failed (%s)", _failure_reason(exc))

    def _run_checkpoint(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _in_thread_pool(self, function, *args) -> None:
        """Calls `function` in gevent's pool of native threads (the SQLite driver lets go of
        the GIL while it waits for a lock or the disk), the event loop going on meanwhile."""
        import gevent
        gevent.get_hub().threadpool.apply(function, args)


def _failure_reason(exc: Exception) -> str:
    """A database error's first line, for the log: the driver's own error when SQLAlchemy wraps one."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]


def open_ledger(engine: Engine, *, queue_size: int, flush_interval_s: float) -> Ledger:
    """A ledger for `engine`, written out when the process exits."""
    ledger = Ledger(engine, queue_size=queue_size, flush_interval_s=flush_interval_s)
    atexit.register(ledger.close)
    return ledger
