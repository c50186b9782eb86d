"""Whether the other end of a connection has hung up, for any descriptor number.

`select.select` refuses descriptors above FD_SETSIZE (1024), which a busy worker or the
simulator under a few hundred streams reaches; `poll` has no such limit. No Flask here, so
the simulator can use it too."""
from __future__ import annotations

import select
import socket

# A peek that does not wait, as a plain int: the flags are enum members, and or-ing them at
# each call runs enum's Python code (it showed in a profile of the relay's client checks).
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


def peek_now(sock: socket.socket) -> bytes | None:
    """One byte peeked from an OS socket without waiting, in one system call: b"" when the
    peer has closed it (or it is broken), the byte when one is waiting (it stays unread), None
    when nothing is."""
    try:
        return sock.recv(1, _PEEK_NOW)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def peer_closed(sock: socket.socket, wait_s: float = 0.0) -> bool | None:
    """Waits up to `wait_s` for the socket to become readable. True when the peer has
    closed it (readable with nothing to read: its FIN) or it is broken; False when bytes are
    waiting (pipelined data, not a close); None when nothing happened within the wait."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(max(0, int(wait_s * 1000))):
        return None
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ValueError:  # TLS sockets refuse MSG_PEEK: we cannot tell, so assume it is there
        return False
    except OSError:
        return True
