"""Giving up on a streamed request while it waits for the upstream's headers: a client that
leaves then must not keep the upstream request open until the read timeout (tokens cost
money from the moment the upstream accepted the request).

The request blocks in `requests` until the headers arrive, so a watcher thread (a greenlet
under gevent) checks the client meanwhile, and on its departure shuts down the socket of the
upstream connection the request uses, which the connection pools below record.
"""
from __future__ import annotations

import contextvars
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# How often the watcher asks whether the client is still there.
WATCH_S = 0.2
_OPENING: contextvars.ContextVar["Opening | None"] = contextvars.ContextVar("kimi_opening", default=None)


class Opening:
    """One request being opened: the upstream connection it uses, and whether it was abandoned."""

    def __init__(self) -> None:
        self.connection = None
        self.abandoned = False
        self.done = threading.Event()


class _RecordingPool:
    def _get_conn(self, timeout=None):
        connection = super()._get_conn(timeout)
        opening = _OPENING.get()
        if opening is not None:
            opening.connection = connection
        return connection


class RecordingHTTPConnectionPool(_RecordingPool, HTTPConnectionPool):
    """urllib3's HTTP pool, telling the request being opened which connection it got."""


class RecordingHTTPSConnectionPool(_RecordingPool, HTTPSConnectionPool):
    """urllib3's HTTPS pool, telling the request being opened which connection it got."""


def record_connections(adapter) -> None:
    """Makes a `requests` adapter's pools record connections for `abandon_when`."""
    adapter.poolmanager.pool_classes_by_scheme = {"http": RecordingHTTPConnectionPool,
                                                  "https": RecordingHTTPSConnectionPool}


@contextmanager
def abandon_when(client_gone: Callable[[], bool] | None) -> Iterator[Opening]:
    """While the body runs, a watcher ends the upstream request as soon as `client_gone()`
    says so; the yielded `Opening` tells afterwards whether that happened."""
    opening = Opening()
    token = _OPENING.set(opening)
    if client_gone is not None:
        threading.Thread(target=_watch, args=(opening, client_gone), daemon=True).start()
    try:
        yield opening
    finally:
        opening.done.set()
        _OPENING.reset(token)


def _watch(opening: Opening, client_gone: Callable[[], bool]) -> None:
    while not opening.done.wait(WATCH_S):
        if client_gone():
            opening.abandoned = True
            sock = getattr(opening.connection, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed
            return
