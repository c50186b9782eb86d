"""Server-sent events: reading the upstream's `data:` lines and framing our own events."""
from __future__ import annotations

import json
from typing import Callable, Iterator

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def iter_data_lines(read: Callable[[], bytes]) -> Iterator[bytes]:
    """Yields the payload of every `data:` line, as soon as its line is complete.

    `read` returns whatever bytes have arrived (at least one) or b"" at the end. Lines may
    end in LF or CRLF and may be split across reads anywhere, even inside a multi-byte
    character, since lines are split as bytes before any decoding. Comments and other
    fields (`event:`, `id:`) are skipped.
    """
    buffer = b""
    while True:
        block = read()
        if not block:
            return
        buffer += block
        if b"\n" not in block:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()


def event(payload: dict) -> bytes:
    """One SSE event carrying a JSON object, ready to flush."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
