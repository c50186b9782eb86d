"""Reading an upstream socket with a bound on the wait: `receiver(sock)` picks how.

A socket's own timeout works everywhere, but under gevent each timed read first fails once
with EAGAIN and then arms a fresh timer and waiter; relaying a stream, that was paid for
every chunk. Under gevent the stream instead keeps one read watcher for its life, reads only
once the socket is readable, and arms a timer only when its deadline moves earlier."""
from __future__ import annotations

import socket
import time

from .reading import READ_BLOCK


class TimeoutReceiver:
    """Reads through the socket's own timeout (threads, TLS, any socket)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def recv(self, wait_s: float) -> bytes | None:
        """The next block (b"" at the end), or None when nothing came within `wait_s`."""
        self._sock.settimeout(wait_s)
        try:
            return self._sock.recv(READ_BLOCK)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Nothing to release."""


class GeventReceiver:
    """Reads a plain gevent socket through the OS socket under it, waiting on the event loop
    directly: one read watcher for the stream's life, started for each wait, and a timer only
    when the wait must end earlier than the one already armed. A timer that fires before the
    current wait's end re-arms itself for the rest, without waking the stream: a stream whose
    chunks keep coming moves its deadline on each wait, and would otherwise be woken for
    nothing each time an older deadline passes."""

    def __init__(self, sock, hub, getcurrent):
        self._raw = sock._sock  # non-blocking, as gevent keeps it
        self._hub = hub
        self._getcurrent = getcurrent
        self._io = hub.loop.io(self._raw.fileno(), 1)  # 1: readable
        self._timer = None
        self._timer_at = 0.0
        self._until = 0.0  # when the current wait ends
        self._waiter = None  # the greenlet waiting in `_wait`, if any
        self._drained = False  # the last read took all there was: wait before reading again

    def recv(self, wait_s: float) -> bytes | None:
        """The next block (b"" at the end), or None when nothing came within `wait_s` (or the
        wait ended early, which the caller tells by the time)."""
        if self._drained and not self._wait(wait_s):
            return None
        try:
            block = self._raw.recv(READ_BLOCK)
        except BlockingIOError:
            self._drained = True
            return None
        self._drained = 0 < len(block) < READ_BLOCK
        return block

    def _wait(self, wait_s: float) -> bool:
        until = self._until = time.monotonic() + wait_s
        if self._timer is None or not self._timer.active or until < self._timer_at:
            self._arm(wait_s, until)
        self._waiter = self._getcurrent()
        self._io.start(self._waiter.switch, True)
        try:
            return self._hub.switch()
        finally:
            self._waiter = None
            self._io.stop()

    def _arm(self, wait_s: float, until: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._timer = self._hub.loop.timer(wait_s)
        self._timer_at = until
        # From the time now: the loop's own clock stands still while greenlets run, so after a
        # busy stretch a timer set from it would already be due.
        self._timer.start(self._timed_out, update=True)

    def _timed_out(self) -> None:
        if self._waiter is None:  # not while it waits on anything else (a slow client's socket)
            return
        left = self._until - time.monotonic()
        if left > 0:  # armed for an earlier wait's end: this one goes on
            self._arm(left, self._until)
            return
        self._waiter.switch(False)

    def close(self) -> None:
        """Releases the watchers (the socket is the stream's to close)."""
        self._io.close()
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def receiver(sock) -> TimeoutReceiver | GeventReceiver:
    """The cheapest way to read `sock` with a bounded wait, from the current thread or greenlet."""
    module = type(sock).__module__
    if module.startswith("gevent.") and type(sock).__name__ == "socket" and hasattr(sock, "_sock"):
        from gevent import get_hub, getcurrent  # only ever under gevent
        return GeventReceiver(sock, get_hub(), getcurrent)
    return TimeoutReceiver(sock)
