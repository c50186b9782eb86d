"""moonshot/opening.py: one watcher per process ends the upstream request of every stream
whose client leaves before the upstream's headers, and only while that request is opening."""
from __future__ import annotations

import socket
import time

import pytest

from kimi_backend.moonshot.opening import (HOLD_MAX_BYTES, WATCH_S, LeanHTTPConnection, LeanHTTPSConnection,
                                          RecordingHTTPConnectionPool, RecordingHTTPSConnectionPool, abandon_when)
from tests.helpers import wait_until


class Connection:
    """An upstream connection as the pool records it: one end of a socket pair."""

    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair()

    def shut_down(self) -> bool:
        self.peer.settimeout(0)
        try:
            return self.peer.recv(1) == b""
        except BlockingIOError:
            return False


def test_every_opening_whose_client_left_is_abandoned():
    gone = {"a": False, "b": False}
    connections = {name: Connection() for name in gone}
    with abandon_when(lambda: gone["a"]) as first, abandon_when(lambda: gone["b"]) as second:
        first.connection, second.connection = connections["a"], connections["b"]
        time.sleep(WATCH_S * 1.5)
        assert not first.abandoned and not second.abandoned
        gone["a"] = gone["b"] = True
        wait_until(lambda: first.abandoned and second.abandoned, timeout=WATCH_S * 5)
    assert connections["a"].shut_down() and connections["b"].shut_down()


def test_an_opening_that_ended_is_left_alone():
    gone = False
    connection = Connection()
    with abandon_when(lambda: gone) as opening:
        opening.connection = connection
    gone = True  # the connection now belongs to the stream (or the pool)
    time.sleep(WATCH_S * 2.5)
    assert not opening.abandoned and not connection.shut_down()


def test_no_check_no_opening():
    with abandon_when(None) as opening:
        assert opening is None



class CountingSocket:
    """A connected socket that records what each `sendall` sent."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.sent: list[bytes] = []

    def sendall(self, data) -> None:
        self.sent.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.mark.parametrize("body,sends", [(b'{"model": "kimi"}', 1), (None, 1), (b"x" * (HOLD_MAX_BYTES + 1), 2)])
def test_a_small_body_goes_out_with_its_headers(body, sends):
    """One send for the headers and a small body; a large body, or none, as urllib3 sends it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        connection = LeanHTTPConnection("127.0.0.1", listener.getsockname()[1])
        connection.connect()
        peer, _ = listener.accept()
        with peer:
            connection.sock = counting = CountingSocket(connection.sock)
            headers = {"Content-Length": str(len(body))} if body is not None else {}
            connection.request("POST" if body is not None else "GET", "/chat/completions", body=body, headers=headers)
            assert len(counting.sent) == sends
            sent = b"".join(counting.sent)
            assert sent.startswith(b"POST /chat/completions" if body else b"GET /chat/completions")
            assert sent.endswith(b"\r\n\r\n" + body if body else b"\r\n\r\n")
            connection.close()


def test_the_pools_make_lean_connections():
    assert RecordingHTTPConnectionPool.ConnectionCls is LeanHTTPConnection
    assert RecordingHTTPSConnectionPool.ConnectionCls is LeanHTTPSConnection
