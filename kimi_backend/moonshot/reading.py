"""How much of an upstream reply we read, and the bounded read of a non-streamed reply's
body: a reply over UPSTREAM_MAX_REPLY_BYTES, or still dripping in at its deadline, fails
like an upstream that broke, so no upstream can hold a worker or its memory."""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from ..errors import UpstreamError
from .exchange import Answer
from .framing import BrokenFraming, CloseDelimitedBody

READ_BLOCK = 65536


@dataclass(frozen=True)
class ReplyLimits:
    """How much of a reply we read: its total size and, for streams, the longest line."""

    max_reply_bytes: int
    max_line_bytes: int

    def too_large(self) -> str:
        """The message for a reply over `max_reply_bytes`."""
        return (f"The upstream's reply passed UPSTREAM_MAX_REPLY_BYTES ({self.max_reply_bytes} bytes) "
                "and was refused.")


def read_body(answer: Answer, limits: ReplyLimits, deadline: float) -> bytes:
    """The whole body of a non-streamed answer, read as it arrives. It is read after the
    headers, so a reset, truncated or stalled body fails here, and is mapped like a failure
    before the headers; so are a body over UPSTREAM_MAX_REPLY_BYTES and one still arriving at
    the deadline."""
    framing = answer.framing
    block, answer.pending = answer.pending, b""
    body = bytearray()
    try:
        while True:
            if block:
                body += framing.decode(block)
                if len(body) > limits.max_reply_bytes:
                    raise UpstreamError(502, "upstream_reply_too_large", limits.too_large())
            if framing.done:
                break
            if block and time.monotonic() > deadline:
                raise UpstreamError(504, "upstream_timeout", "The upstream was still sending its reply at the timeout.")
            block = answer.sock.recv(READ_BLOCK)
            if not block:
                if isinstance(framing, CloseDelimitedBody):
                    break
                raise UpstreamError(502, "upstream_disconnected",
                                    "The upstream connection broke before the reply was complete.")
    except socket.timeout:
        raise UpstreamError(504, "upstream_timeout", "The upstream stopped sending its reply within the read timeout.") from None
    except (BrokenFraming, OSError):
        raise UpstreamError(502, "upstream_disconnected", "The upstream connection broke before the reply was complete.") from None
    return bytes(body)
