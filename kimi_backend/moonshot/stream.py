"""The handle of an open streaming completion: reading its chunks within the reply limits
and the read timeout, what counts as a broken stream (`StreamBroken`), and releasing or
aborting its upstream connection so it can go back to the pool."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Callable, Iterator

import requests
import urllib3

from . import replies
from .reading import READ_BLOCK, ReplyLimits
from .sse import LineTooLong, iter_data_lines
from .upstream_errors import error_message

# After `[DONE]`, how long to wait for the body's last bytes before giving up on reusing the
# connection (an upstream that says [DONE] and then nothing must not hold it). The reader waits
# this after the client has had its last event, so it delays nobody; 0.25 s proved too short
# for a loaded machine's upstream to send its chunked terminator.
DRAIN_TIMEOUT_S = 1.0


class StreamBroken(Exception):
    """The upstream stream failed after our 200 went out; `code` says how."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class UpstreamStream:
    """An open streaming completion whose status was 200; iterate `chunks()`, then `close()`."""

    def __init__(self, response: requests.Response, limits: ReplyLimits, progress_timeout_s: float,
                 redact: Callable[[str], str]):
        self._response = response
        self._limits = limits
        self._progress_timeout_s = progress_timeout_s
        self._redact = redact
        self._lock = threading.Lock()
        self._released = False
        self._complete = False

    def chunks(self) -> Iterator[dict]:
        """Yields each parsed chunk as it arrives, until `[DONE]`; raises `StreamBroken` on a
        malformed chunk, a broken connection, a read timeout, an end without `[DONE]`, a line
        or a reply over its limit, or a stream that sends nothing but empty chunks for longer
        than the read timeout (the timeout bounds silence, and empty chunks say nothing)."""
        raw = self._response.raw
        received = 0

        def read() -> bytes:
            nonlocal received
            block = raw.read1(READ_BLOCK)
            received += len(block)
            if received > self._limits.max_reply_bytes:
                raise StreamBroken("upstream_reply_too_large", self._limits.too_large())
            return block

        progress_at = time.monotonic()
        try:
            for data in iter_data_lines(read, self._limits.max_line_bytes):
                if data == b"[DONE]":
                    self._complete = True
                    return
                chunk = self._parse(data)
                if replies.carries_something(chunk):
                    progress_at = time.monotonic()
                elif time.monotonic() - progress_at > self._progress_timeout_s:
                    raise StreamBroken("upstream_timeout", "The upstream sent only empty chunks for longer than the read timeout.")
                yield chunk
        except LineTooLong:
            raise StreamBroken("upstream_reply_too_large", f"The upstream sent a stream line longer than "
                               f"UPSTREAM_MAX_LINE_BYTES ({self._limits.max_line_bytes} bytes).") from None
        except urllib3.exceptions.ReadTimeoutError:
            raise StreamBroken("upstream_timeout", "The upstream stopped sending for longer than the read timeout.") from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise StreamBroken("upstream_disconnected", "The upstream connection broke before the reply was complete.") from None
        raise StreamBroken("upstream_incomplete", "The upstream stream ended before it was complete.")

    def _parse(self, data: bytes) -> dict:
        try:
            chunk = json.loads(data)
            if replies.may_hold_surrogates(data):
                chunk = replies.encodable(chunk)
            if isinstance(chunk, dict) and "error" in chunk:
                raise StreamBroken("upstream_error", error_message(chunk, self._redact)
                                   or "The upstream reported an error mid-stream.")
            return replies.chunk(chunk)
        except (ValueError, RecursionError):
            raise StreamBroken("upstream_malformed", "The upstream sent a malformed stream chunk.") from None

    def abort(self) -> None:
        """Ends the upstream request now, from any thread: shuts the socket down, which wakes
        a reader blocked on it (a plain close does not, on Linux) and tells the upstream at
        once that nobody is listening. The reader then releases the response."""
        with self._lock:
            # Once released, the connection may be back in the pool serving someone else.
            if self._released:
                return
            sock = _socket_of(self._response)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def close(self) -> None:
        """Releases the upstream connection; call it from the thread that reads the stream.
        After a complete stream, the body's last bytes are read first so the connection
        can return to the pool (an `abort()` meanwhile just ends that early)."""
        if self._complete:
            try:
                _drain(self._response)
            except (urllib3.exceptions.HTTPError, OSError):
                pass
        with self._lock:
            self._released = True
        self._response.close()


def _drain(response: requests.Response) -> None:
    """Reads the few bytes after `[DONE]` (the chunked body's end) so the connection can go
    back to the pool instead of being closed; waits for them at most DRAIN_TIMEOUT_S."""
    sock = _socket_of(response)
    if sock is not None:
        sock.settimeout(DRAIN_TIMEOUT_S)  # urllib3 sets its own timeout again when it reuses the connection
    for _ in range(4):
        if not response.raw.read1(READ_BLOCK):
            return


def _socket_of(response: requests.Response):
    """The socket under a streaming response. http.client hands it from the connection to
    the response's file object when the upstream says `Connection: close`, so look in both."""
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock
