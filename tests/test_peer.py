"""The hang-up check the relay and the simulator share: right for every descriptor number,
including those above select()'s limit of 1024 that a busy process reaches."""
import os
import resource
import socket

import pytest

from kimi_backend.peer import peek_now, peer_closed
from kimi_backend.streaming import client_gone_probe


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_an_open_quiet_connection_is_not_closed(pair):
    a, _ = pair
    assert peer_closed(a) is None
    assert peer_closed(a, 0.01) is None


def test_pipelined_bytes_are_not_a_close(pair):
    a, b = pair
    b.sendall(b"x")
    assert peer_closed(a) is False
    assert a.recv(1) == b"x"  # only peeked


def test_a_hang_up_is_seen(pair):
    a, b = pair
    b.close()
    assert peer_closed(a) is True
    assert peer_closed(a, 5.0) is True  # at once, not after the wait


def test_a_descriptor_above_select_limit_works():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip("the open-files limit does not allow a descriptor above 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 2050)
    a.close()
    sock = socket.socket(fileno=high)
    try:
        environ = {"gunicorn.socket": sock}
        gone = client_gone_probe(environ)
        assert gone() is False
        b.close()
        assert gone() is True
    finally:
        sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_peek_that_does_not_wait_tells_quiet_from_waiting_bytes_from_closed(pair):
    a, b = pair
    a.setblocking(False)
    assert peek_now(a) is None  # open, nothing waiting
    b.sendall(b"xy")
    assert peek_now(a) == b"x" and a.recv(2) == b"xy"  # peeked, left unread
    b.close()
    assert peek_now(a) == b""
