"""Relaying an upstream stream to our client as the contract's SSE events."""
from __future__ import annotations

from typing import Iterator

from .moonshot.client import StreamBroken, UpstreamStream
from .moonshot.sse import DONE, event
from .telemetry import Exchange


def relay(stream: UpstreamStream, exchange: Exchange) -> Iterator[bytes]:
    """Yields our events for each upstream chunk as it arrives, then the usage event and
    `[DONE]`; a failure after the start becomes an in-band error event. Receives plain
    values only (never `request`), always releases the upstream, and reports how the
    stream ended to `exchange` (the request's log line and metrics)."""
    finish_reason = None
    usage = None
    outcome = "client_closed"
    exchange.stream_started()
    try:
        for chunk in stream.chunks():
            # Moonshot puts usage inside the last choice; OpenAI-style servers send a
            # top-level usage chunk. Read both.
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    yield event({"content": "", "reasoning": delta["reasoning_content"]})
                if delta.get("content"):
                    yield event({"content": delta["content"]})
                usage = choice.get("usage") or usage
                finish_reason = choice.get("finish_reason") or finish_reason
        outcome = "ok"
        yield event({"content": "", "finish_reason": finish_reason or "stop", "usage": usage})
    except StreamBroken as exc:
        outcome = exc.code
        yield event({"error": exc.message, "code": exc.code})
    finally:
        stream.close()
        exchange.stream_ended(usage, outcome)
    yield DONE
