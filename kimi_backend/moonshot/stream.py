"""The handle of an open streaming completion: its chunks read straight off the upstream
socket, within the reply limits and the read timeout, by the relay itself for as long as it
can wait (no reader thread); what counts as a broken stream (`StreamBroken`); and releasing
its upstream connection, back to the pool after a complete stream."""
from __future__ import annotations

import json
import time
from typing import Callable

from . import replies
from .exchange import Answer
from .framing import BrokenFraming, CloseDelimitedBody
from .reading import ReplyLimits
from .sse import DataLines, LineTooLong
from .upstream_errors import error_message
from .waiting import receiver

# After `[DONE]`, how long to wait for the body's last bytes before giving up on reusing the
# connection (an upstream that says [DONE] and then nothing must not hold it). This runs after
# the client has had its last event, so it delays nobody; 0.25 s proved too short for a
# loaded machine's upstream to send its chunked terminator.
DRAIN_TIMEOUT_S = 1.0


class StreamBroken(Exception):
    """The upstream stream failed after our 200 went out; `code` says how."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def disconnected() -> StreamBroken:
    """The failure of a connection that broke (or closed) before the reply was complete."""
    return StreamBroken("upstream_disconnected", "The upstream connection broke before the reply was complete.")


class UpstreamStream:
    """An open streaming completion whose status was 200: call `receive()` until `complete`,
    then `close()`, from the one thread (or greenlet) that relays it."""

    def __init__(self, answer: Answer, limits: ReplyLimits, read_timeout_s: float, redact: Callable[[str], str]):
        self._answer = answer
        self._limits = limits
        self.read_timeout_s = read_timeout_s  # the longest silence (and run of empty chunks) allowed
        self._redact = redact
        self._framing = answer.framing
        self._whole_chunk = getattr(answer.framing, "whole_chunk", None)  # chunked bodies only
        self._templates: replies.TextTemplates | None = None  # see read_text_deltas
        # Only the body bytes that came with the head (at most one block): the rest stays in
        # the socket for the bounded reads below, so the reply limit applies before more is read.
        self._pending, answer.pending = answer.pending, b""
        self._receiver = receiver(answer.sock)
        self._received = 0
        self._heard_at = self._progress_at = time.monotonic()
        self._lines = DataLines(limits.max_line_bytes)
        self.failure: StreamBroken | None = None  # what ends the stream once the chunks before it are relayed
        self.complete = False

    def receive(self, wait_s: float) -> list[dict | replies.TextDelta]:
        """The parsed chunks that arrive within `wait_s`: every one already here, or those of
        the next block the upstream sends, or none when it stays quiet that long. Sets
        `complete` at `[DONE]`. Raises `StreamBroken` on a malformed chunk, a broken
        connection, silence longer than the read timeout, an end without `[DONE]`, a line or
        a reply over its limit, or nothing but empty chunks for longer than the read timeout
        (the timeout bounds silence, and empty chunks say nothing)."""
        if self.failure is not None:
            raise self.failure
        chunks: list[dict | replies.TextDelta] = []
        try:
            self._take(chunks, time.monotonic() + wait_s)
        except StreamBroken as exc:
            if not chunks:
                raise
            self.failure = exc  # the chunks before the failure are relayed first
        return chunks

    def _take(self, chunks: list[dict | replies.TextDelta], deadline: float) -> None:
        try:
            data = self._next_data(deadline)
            if data is None:
                return
            self._chunks_of(chunks, data)
        except (BrokenFraming, OSError):
            raise disconnected() from None

    @property
    def socket(self):
        """The upstream connection's socket, for a caller that reads it itself (`take`)."""
        return self._answer.sock

    def take(self, block: bytes) -> list[dict | replies.TextDelta]:
        """`receive` for a caller that read `block` off `socket` itself (b"" when the
        upstream closed it): the parsed chunks it completes; sets `complete` at `[DONE]`.
        Raises `StreamBroken` as `receive` does; a failure after some chunks is kept in
        `failure` and those chunks are returned first. The caller bounds the silence: it
        is `silent_for()`."""
        chunk = self._usual(block)
        if chunk is not None:
            return [chunk]
        chunks: list[dict | replies.TextDelta] = []
        try:
            try:
                data = self._data_of(block)
                if data:
                    self._chunks_of(chunks, self._count(data))
                if (not block or self._framing.done) and not self.complete:
                    self._chunks_of(chunks, b"")  # the body ended without [DONE]
            except BrokenFraming:
                raise disconnected() from None
        except StreamBroken as exc:
            if not chunks:
                raise
            self.failure = exc
        return chunks

    def read_text_deltas(self) -> None:
        """From now on `take` may return a `replies.TextDelta` in place of a chunk that only
        adds text to the first choice and is shaped like an earlier one (`TextTemplates`):
        for a caller that needs no more of such a chunk than its text."""
        self._templates = replies.TextTemplates()

    def _usual(self, block: bytes) -> dict | replies.TextDelta | None:
        """`take` for the usual block of a relayed stream, without its loops: one whole HTTP
        chunk holding one whole `data:` event of a plain chunk (`replies.plain_chunk`) or of a
        learnt text shape, the body at a chunk boundary with no line pending. None for any
        other block, before anything is changed, so `take` reads it the general way."""
        whole_chunk = self._whole_chunk
        data = whole_chunk(block) if whole_chunk is not None else None
        if data is None:
            return None
        payload = self._lines.whole_event(data)
        if payload is None or payload == b"[DONE]":
            return None
        chunk = self._known(payload)
        if chunk is None:
            return None
        self._heard_at = time.monotonic()
        self._count(data)
        self._progressed(chunk)
        return chunk

    def _known(self, payload: bytes) -> dict | replies.TextDelta | None:
        """A payload read the quick ways: as text when shaped like an earlier text-only chunk
        (`read_text_deltas`), else as a plain chunk (whose shape is then learnt); None for
        anything else, with nothing changed."""
        templates = self._templates
        if templates is not None:
            delta = templates.read(payload)
            if delta is not None:
                return delta
        chunk = replies.plain_chunk(payload)
        if chunk is not None and templates is not None:
            templates.learn(payload, chunk)
        return chunk

    def _progressed(self, chunk: dict | replies.TextDelta) -> None:
        """Moves the progress clock on for a chunk that moves the reply on; raises once only
        empty chunks have come for longer than the read timeout. Measured from when the
        chunk's block was read (`_heard_at`): the same moment, one clock read fewer."""
        if type(chunk) is replies.TextDelta or replies.carries_something(chunk):
            self._progress_at = self._heard_at
        elif self._heard_at - self._progress_at > self.read_timeout_s:
            raise StreamBroken("upstream_timeout", "The upstream sent only empty chunks for longer than the read timeout.")

    def silent_for(self, now: float) -> float:
        """How long the upstream has sent nothing, at `now`."""
        return now - self._heard_at

    def resume(self) -> None:
        """Restarts the silence clock: the caller stopped reading for a while (a slow client),
        and that time is not the upstream's silence."""
        self._heard_at = time.monotonic()

    def _chunks_of(self, chunks: list[dict | replies.TextDelta], data: bytes) -> None:
        """Parses the body's data into `chunks`; b"" is the body's end."""
        if not data:
            raise StreamBroken("upstream_incomplete", "The upstream stream ended before it was complete.")
        try:
            payloads = self._lines.feed(data)
        except LineTooLong as exc:
            self._parse_into(chunks, exc.payloads)
            raise StreamBroken("upstream_reply_too_large", f"The upstream sent a stream line longer than "
                               f"UPSTREAM_MAX_LINE_BYTES ({self._limits.max_line_bytes} bytes).") from None
        self._parse_into(chunks, payloads)

    def _parse_into(self, chunks: list[dict | replies.TextDelta], payloads: list[bytes]) -> None:
        for data in payloads:
            if data == b"[DONE]":
                self.complete = True
                return
            chunk = self._known(data)
            if chunk is None:
                chunk = self._parse(data)
            self._progressed(chunk)
            chunks.append(chunk)

    def _next_data(self, deadline: float) -> bytes | None:
        """The body's next data (one block's), b"" at its end, or None when nothing came by
        `deadline`."""
        if self._pending:
            data, self._pending = self._framing.decode(self._pending), b""
            if data:
                return self._count(data)
        while not self._framing.done:
            now = time.monotonic()
            silent_until = self._heard_at + self.read_timeout_s
            if now >= silent_until:
                raise StreamBroken("upstream_timeout", "The upstream stopped sending for longer than the read timeout.")
            if now >= deadline:
                return None
            # A bounded wait on the socket itself (waiting.py) leaves nothing half-read, unlike a
            # timeout inside http.client.
            block = self._receiver.recv(min(deadline, silent_until) - now)
            if block is None:
                continue
            data = self._data_of(block)
            if data or not block:
                return self._count(data)
        return b""

    def _data_of(self, block: bytes) -> bytes:
        """The body's data in a block read off the socket; b"" for the close (raises unless
        the body ends at the close); raises BrokenFraming."""
        if not block:
            if isinstance(self._framing, CloseDelimitedBody):
                return b""
            raise disconnected()
        self._heard_at = time.monotonic()
        return self._framing.decode(block)

    def _count(self, data: bytes) -> bytes:
        self._received += len(data)
        if self._received > self._limits.max_reply_bytes:
            raise StreamBroken("upstream_reply_too_large", self._limits.too_large())
        return data

    def _parse(self, data: bytes) -> dict:
        """The general reading of a payload that is not a plain chunk (`_known`)."""
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

    def close(self) -> None:
        """Releases the upstream connection. After a complete stream, the body's last bytes
        (the chunked terminator) are read first, waiting at most DRAIN_TIMEOUT_S, so the
        connection can go back to the pool; any other end closes it (see `Answer.release`),
        which also tells the upstream at once that nobody is listening."""
        try:
            if self.complete and not self._answer.will_close:
                self._drain()  # once the body is read to its end, `release` keeps the connection open
        finally:
            self._receiver.close()
            self._answer.release()

    def _drain(self) -> None:
        """Reads the body to its end, waiting at most DRAIN_TIMEOUT_S; a body that does not
        end cleanly is left as it is (and its connection closed). Never called for a body that
        ends at the close (`will_close`)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        try:
            while not self._framing.done:
                if self._next_data(deadline) is None:
                    return
        except (StreamBroken, BrokenFraming, OSError):
            return
