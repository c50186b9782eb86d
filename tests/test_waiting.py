"""moonshot/waiting.py: the bounded upstream read, by the socket's timeout and, under gevent,
on the event loop directly (one read watcher, a timer only when the deadline moves earlier)."""
from __future__ import annotations

import socket
import time

import gevent
import gevent.socket

from kimi_backend.moonshot.waiting import GeventReceiver, TimeoutReceiver, receiver


def test_a_plain_socket_is_read_through_its_timeout():
    a, b = socket.socketpair()
    with a, b:
        reader = receiver(a)
        assert isinstance(reader, TimeoutReceiver)
        assert reader.recv(0.05) is None
        b.sendall(b"data")
        assert reader.recv(1) == b"data"
        b.close()
        assert reader.recv(1) == b""


def test_a_gevent_socket_is_read_on_the_event_loop():
    a, b = gevent.socket.socketpair()
    with a, b:
        reader = receiver(a)
        assert isinstance(reader, GeventReceiver)
        assert reader.recv(0.05) is None  # nothing there: found without waiting
        began = time.monotonic()
        assert reader.recv(0.1) is None  # now it waits, and no longer than asked
        assert 0.09 < time.monotonic() - began < 1
        gevent.spawn_later(0.05, b.sendall, b"data")
        assert reader.recv(5) == b"data"
        b.close()
        assert reader.recv(5) == b""
        reader.close()


def test_a_wait_after_a_busy_stretch_still_lasts_as_long_as_asked():
    """The event loop's clock stands still while greenlets run: a timer set from it after a
    busy stretch (here 0.3 s without a switch) would fire at once."""
    a, b = gevent.socket.socketpair()
    with a, b:
        reader = receiver(a)
        assert reader.recv(0.05) is None
        time.sleep(0.3)  # the thread busy, the loop not running (this test process is not patched)
        began = time.monotonic()
        assert reader.recv(0.1) is None
        assert time.monotonic() - began >= 0.09
        reader.close()


def test_a_timer_left_armed_does_not_wake_the_reader_from_another_wait():
    """A read that got its bytes leaves its timer armed; when it fires while the greenlet waits
    on something else (a slow client's socket, here a sleep), that wait must not end early."""
    a, b = gevent.socket.socketpair()
    with a, b:
        reader = receiver(a)
        assert reader.recv(0.05) is None
        gevent.spawn_later(0.02, b.sendall, b"data")
        assert reader.recv(0.2) == b"data"  # the timer for +0.2 s stays armed
        began = time.monotonic()
        gevent.sleep(0.5)
        assert time.monotonic() - began >= 0.45
        reader.close()


def test_an_older_deadline_passing_does_not_end_a_later_wait():
    """A stream whose chunks keep coming moves its deadline on with each wait; the timer armed
    for an earlier wait's end re-arms itself for the rest instead of waking the reader."""
    a, b = gevent.socket.socketpair()
    with a, b:
        reader = receiver(a)
        assert reader.recv(0.05) is None
        gevent.spawn_later(0.02, b.sendall, b"first")
        assert reader.recv(0.1) == b"first"  # its timer, for +0.1 s, stays armed
        gevent.spawn_later(0.3, b.sendall, b"second")
        began = time.monotonic()
        assert reader.recv(5) == b"second"  # not None when the +0.1 s timer fires
        assert time.monotonic() - began >= 0.25
        reader.close()
