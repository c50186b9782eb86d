"""Server-sent events: reading the upstream's `data:` lines and framing our own events."""
from __future__ import annotations

import json

import orjson

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
# One encoder for every event: json.dumps with options builds a new one per call (1.2 of the
# 2.8 µs an event's JSON took).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class LineTooLong(ValueError):
    """A line grew past the reader's limit without ending. `payloads`: those of the lines
    before it in the same block, which came first."""

    def __init__(self, message: str, payloads: list[bytes] | None = None):
        super().__init__(message)
        self.payloads = payloads or []


class DataLines:
    """The payload of every `data:` line, from bytes fed as they arrive.

    Blocks may be split anywhere, even inside a multi-byte character, since lines are split
    as bytes before any decoding; lines may end in LF or CRLF. Comments and other fields
    (`event:`, `id:`) are skipped. A line longer than `max_line_bytes` raises `LineTooLong`;
    the partial line is kept in one growing buffer, so a long line costs linear time, not
    quadratic."""

    def __init__(self, max_line_bytes: int = 1 << 20):
        self._max = max_line_bytes
        self._partial = bytearray()

    def whole_event(self, block: bytes) -> bytes | None:
        """The payload of `block` when it is exactly one whole `data:` event ended by two LFs
        and no line is pending: the usual block when relaying a stream, and `feed`'s result
        for it. None for any other block; nothing is changed either way."""
        line = len(block) - 2
        if not self._partial and block.startswith(b"data:") and block.find(b"\n") == line \
                and block.endswith(b"\n\n") and line <= self._max:
            return block[5:-2].strip()
        return None

    def feed(self, block: bytes) -> list[bytes]:
        """The payloads of the lines that `block` completes, in order."""
        payload = self.whole_event(block)
        if payload is not None:
            return [payload]
        partial = self._partial
        if b"\n" not in block:
            partial += block
            if len(partial) > self._max:
                raise self._too_long([])
            return []
        lines = block.split(b"\n")
        if partial:
            partial += lines[0]
            lines[0] = bytes(partial)
            partial.clear()
        partial += lines.pop()
        payloads = []
        for line in lines:
            if len(line) > self._max:
                raise self._too_long(payloads)
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())
        if len(partial) > self._max:
            raise self._too_long(payloads)
        return payloads

    def _too_long(self, payloads: list[bytes]) -> LineTooLong:
        return LineTooLong(f"an SSE line passed {self._max} bytes", payloads)


def event(payload: dict) -> bytes:
    """One SSE event carrying a JSON object, ready to flush."""
    return b"data: " + _ENCODER.encode(payload).encode() + b"\n\n"


def text_event(prefix: bytes, text: str) -> bytes:
    """The event `event()` makes of an object whose last member is the string `text`, given
    the object's JSON up to that member's value (`{"content":`): the bytes are the same, for a
    fifth of the cost, since only the text is encoded. `text` must be encodable as UTF-8 (the
    checked replies' text is, moonshot/replies.py)."""
    # orjson escapes exactly what json does with ensure_ascii=False (tests/test_properties.py compares them).
    return b"data: " + prefix + orjson.dumps(text) + b"}\n\n"
