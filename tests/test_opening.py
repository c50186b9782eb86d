"""moonshot/opening.py: one watcher per process ends the upstream request of every stream
whose client leaves before the upstream's headers, and only while that request is opening."""
from __future__ import annotations

import socket
import time

from kimi_backend.moonshot.opening import (WATCH_S, LeanHTTPConnection, LeanHTTPSConnection, Opening,
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


def test_tls_inside_a_proxy_tunnel_is_shut_down_by_the_socket_beneath():
    """urllib3's SSLTransport (TLS to the upstream inside an HTTPS proxy's TLS) has no
    `shutdown`; abandoning shuts its socket beneath."""
    from urllib3.util.ssltransport import SSLTransport

    assert not hasattr(SSLTransport, "shutdown")
    connection = Connection()

    class Transport:  # what an SSLTransport offers here: `socket`, and no shutdown
        socket = connection.sock

    opening = Opening(lambda: True)
    opening.connection = type("Pooled", (), {"sock": Transport()})()
    opening.abandon()
    assert opening.abandoned and connection.shut_down()


def test_an_opening_that_ended_is_left_alone():
    gone = False
    connection = Connection()
    with abandon_when(lambda: gone) as opening:
        opening.connection = connection
    gone = True  # the connection now belongs to the stream (or the pool)
    time.sleep(WATCH_S * 2.5)
    assert not opening.abandoned and not connection.shut_down()


def test_one_watcher_serves_calls_that_come_one_at_a_time():
    """Calls further apart than a check (a service serving one at a time) are watched by the
    same thread, not one started for each; it stops a while after the last."""
    import threading

    from kimi_backend.moonshot.opening import IDLE_CHECKS

    def watchers() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "kimi-opening-watcher"]
    wait_until(lambda: not watchers(), timeout=WATCH_S * (IDLE_CHECKS + 5), message="an earlier test's watcher to stop")
    seen = []
    for _ in range(3):
        with abandon_when(lambda: False):
            seen.extend(watchers())
        time.sleep(WATCH_S * 2.5)
    assert len(seen) == 3 and len(set(seen)) == 1
    wait_until(lambda: not watchers(), timeout=WATCH_S * (IDLE_CHECKS + 5), message="the watcher to stop")


def test_no_check_no_opening():
    with abandon_when(None) as opening:
        assert opening is None



def test_the_pools_make_lean_connections():
    assert RecordingHTTPConnectionPool.ConnectionCls is LeanHTTPConnection
    assert RecordingHTTPSConnectionPool.ConnectionCls is LeanHTTPSConnection


def test_a_pooled_connection_is_checked_with_one_peek_under_gevent(monkeypatch):
    """Open and quiet: reusable. Closed by the upstream, or holding bytes nobody asked for: not
    (urllib3 then opens another). Under gevent the check is a non-blocking peek at the OS
    socket, not gevent's poll and its trip through the event loop."""
    import gevent.socket
    import urllib3.connection

    def no_poll(*args, **kwargs):
        raise AssertionError("urllib3's poll was used")
    monkeypatch.setattr(urllib3.connection, "wait_for_read", no_poll)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def connected():
            connection = LeanHTTPConnection("127.0.0.1", listener.getsockname()[1])
            connection.sock = gevent.socket.create_connection(listener.getsockname())
            return connection, listener.accept()[0]
        quiet, quiet_peer = connected()
        chatty, chatty_peer = connected()
        closed, closed_peer = connected()
        with quiet_peer, chatty_peer:
            chatty_peer.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            closed_peer.close()
            wait_until(lambda: not chatty.is_connected, timeout=5, message="the stray bytes to be seen")
            wait_until(lambda: not closed.is_connected, timeout=5, message="the close to be seen")
            assert quiet.is_connected
            assert chatty.sock.recv(100).startswith(b"HTTP/1.1 408")  # peeked, not taken
        for connection in (quiet, chatty, closed):
            connection.close()
        assert not quiet.is_connected  # no socket at all
