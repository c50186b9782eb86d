"""Giving up on a streamed request while it waits for the upstream's headers: a client that
leaves then must not keep the upstream request open until the read timeout (tokens cost
money from the moment the upstream accepted the request). A non-streamed call is given up
the same way when its client leaves, or the server must stop, before its reply comes.

The request blocks in urllib3 until the headers arrive, so a watcher thread (a greenlet
under gevent) checks the clients meanwhile, and on a departure shuts down the socket of the
upstream connection that request uses, which the connection pools below record. One watcher
serves every request of the process that is being opened: a thread started per request was
a tenth of what opening a stream cost in a burst of a thousand.

The connections in those pools are urllib3's, with under gevent a cheaper check that a pooled
connection is still open (see `_LeanConnection`); requests are written and answers read on
them by exchange.py.
"""
from __future__ import annotations

import contextvars
import socket
import threading
import time
from typing import Callable

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..peer import peek_now

# How often the watcher asks whether the client is still there.
WATCH_S = 0.2
# The watcher stops after this many checks in a row found nothing to watch (2 s). Stopping at
# the first, it was started again by nearly every call of a service serving calls one at a
# time (a thread, or under gevent a greenlet, each time; no change showed in instructions.py).
IDLE_CHECKS = 10
_OPENING: contextvars.ContextVar["Opening | None"] = contextvars.ContextVar("kimi_opening", default=None)


class Opening:
    """One request being opened: the upstream connection it uses, and whether it was abandoned."""

    def __init__(self, client_gone: Callable[[], bool]) -> None:
        self.client_gone = client_gone
        self.connection = None
        self.abandoned = False

    def abandon(self) -> None:
        """Ends the upstream request: shutting its socket down wakes the request blocked on it."""
        self.abandoned = True
        sock = getattr(self.connection, "sock", None)
        # TLS inside an HTTPS proxy's tunnel is urllib3's SSLTransport, which has no shutdown:
        # its socket beneath is shut down instead.
        sock = sock if hasattr(sock, "shutdown") else getattr(sock, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


class _Watcher:
    """Checks the client of every request being opened each WATCH_S, in one thread that runs
    while there are any, and IDLE_CHECKS checks more (started on demand, so it is the
    worker's, never gunicorn's master's)."""

    def __init__(self) -> None:
        self._openings: set[Opening] = set()
        self._lock = threading.Lock()
        self._running = False
        self._idle = 0  # checks in a row that found nothing to watch

    def add(self, opening: Opening) -> None:
        """Watches `opening` until `discard`."""
        with self._lock:
            self._openings.add(opening)
            if not self._running:
                self._running = True
                self._idle = 0
                threading.Thread(target=self._run, name="kimi-opening-watcher", daemon=True).start()

    def discard(self, opening: Opening) -> None:
        """Stops watching `opening`."""
        with self._lock:
            self._openings.discard(opening)

    def _run(self) -> None:
        try:
            while self._watch_once():
                pass
        except BaseException:
            with self._lock:
                self._running = False  # the next opening starts another watcher
            raise

    def _watch_once(self) -> bool:
        time.sleep(WATCH_S)
        with self._lock:
            openings = list(self._openings)
        for opening in openings:
            if not opening.abandoned and opening.client_gone():
                with self._lock:
                    # Once discarded, its connection belongs to the stream or to the pool.
                    if opening in self._openings:
                        opening.abandon()
        with self._lock:
            if self._openings:
                self._idle = 0
                return True
            self._idle += 1
            if self._idle < IDLE_CHECKS:
                return True
            self._running = False
            return False


_WATCHER = _Watcher()


class _LeanConnection:
    """urllib3's connection, with a cheaper check under gevent that a pooled one is still open.

    urllib3 asks it each time a connection is taken from the pool; under gevent that was
    gevent's `poll`, which sets up watchers and switches through the event loop (about 5 % of
    a non-streamed request's samples in a profile), and is here one non-blocking peek at the
    OS socket. An earlier session answered it with a real `poll` and saw p99 at 16
    connections rise; with the peek, two runs interleaving 3-second slices with the parent
    commit's service showed p99 no higher (32-34 against 35-38 ms) and a median CPU per
    request 4 % and 7 % lower, near the method's noise (6 % between two copies of one commit).

    `is_connected` is a public member of urllib3's connections; tests/test_opening.py fails
    if urllib3 stops asking it."""

    @property
    def is_connected(self) -> bool:
        """urllib3's check that a pooled connection is still open with nothing unread on it;
        under gevent, one non-blocking peek at the OS socket beneath."""
        raw = getattr(self.sock, "_sock", None)
        if raw is None or raw.gettimeout() != 0.0:
            return super().is_connected
        return peek_now(raw) is None  # not closed by the upstream, nor holding bytes nobody asked for


class LeanHTTPConnection(_LeanConnection, HTTPConnection):
    """urllib3's HTTP connection, checked more cheaply under gevent (see `_LeanConnection`)."""


class LeanHTTPSConnection(_LeanConnection, HTTPSConnection):
    """urllib3's HTTPS connection, checked more cheaply under gevent (see `_LeanConnection`)."""


class _RecordingPool:
    def _get_conn(self, timeout=None):
        connection = super()._get_conn(timeout)
        opening = _OPENING.get()
        if opening is not None:
            opening.connection = connection
        return connection


class RecordingHTTPConnectionPool(_RecordingPool, HTTPConnectionPool):
    """urllib3's HTTP pool, telling the request being opened which connection it got."""

    ConnectionCls = LeanHTTPConnection


class RecordingHTTPSConnectionPool(_RecordingPool, HTTPSConnectionPool):
    """urllib3's HTTPS pool, telling the request being opened which connection it got."""

    ConnectionCls = LeanHTTPSConnection


def record_connections(adapter) -> None:
    """Makes a `requests` adapter's pools record connections for `abandon_when`."""
    adapter.poolmanager.pool_classes_by_scheme = {"http": RecordingHTTPConnectionPool,
                                                  "https": RecordingHTTPSConnectionPool}


class abandon_when:  # noqa: N801 - used as a function: `with abandon_when(check) as opening:`
    """While the body runs, the watcher ends the upstream request as soon as `client_gone()`
    says so; the `Opening` it gives tells afterwards whether that happened (None: no check).
    (A class rather than a generator under `contextlib.contextmanager`: every non-streamed
    call passes through it, and entering and leaving cost a third as much.)"""

    __slots__ = ("_opening", "_token")

    def __init__(self, client_gone: Callable[[], bool] | None):
        self._opening = Opening(client_gone) if client_gone is not None else None

    def __enter__(self) -> Opening | None:
        opening = self._opening
        if opening is not None:
            self._token = _OPENING.set(opening)
            _WATCHER.add(opening)
        return opening

    def __exit__(self, *exc_info) -> None:
        opening = self._opening
        if opening is not None:
            _WATCHER.discard(opening)
            _OPENING.reset(self._token)
