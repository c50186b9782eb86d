"""How one reply is laid out as a stream: the SSE events in order, each with the pause before
it, including the broken and endless layouts the fault directives ask for."""
from __future__ import annotations

import itertools
from typing import Iterable

from ..sse import DONE, event
from .directives import HANG_LIMIT_S, Behaviour
from .errors import ERROR_MESSAGES
from .replies import Completion
from .wire import encode_json

_MALFORMED_EVENT = b"data: {not json\n\n"
# Not SSE at all: a line of another field, a line of invalid UTF-8, a bare CR and a comment,
# all of which an SSE reader must skip without ending the stream.
_GARBAGE_EVENTS = b"event: ping\n\xff\xfe\xfd not utf-8\n\r: comment\r\n\n"
_MISSHAPEN_EVENT = b'data: {"object": "chat.completion.chunk", "choices": "not a list"}\n\n'


def split_text(text: str, n: int) -> list[str]:
    """Splits text into n nearly equal pieces by characters (never inside a code point);
    fewer pieces when the text is shorter than n."""
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _event(obj: dict) -> bytes:
    """One `data: <json>` event, framed as the service frames its own (sse.event). An odd
    reply's lone surrogate cannot be UTF-8, so that event goes with \\u escapes (still valid JSON)."""
    try:
        return event(obj)
    except UnicodeEncodeError:
        return b"data: " + encode_json(obj) + b"\n\n"


def stream_events(c: Completion, b: Behaviour, include_usage: bool,
                  error_message: str | None = None) -> Iterable[tuple[float, bytes | None]]:
    """Lays out one stream as (pause before it, event bytes) pairs; None marks the connection cut.
    A list, except for the endless faults (sim:drip, sim:endless_line), which never end."""
    # With include_usage Moonshot follows OpenAI: "usage": null on every chunk but the extra one.
    null_usage = {"usage": None} if include_usage else {}

    def chunk(choices: list, **extra) -> bytes:
        return _event({"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
                       "choices": choices, **extra})

    def delta(d: dict) -> bytes:
        return chunk([{"index": 0, "delta": d, "finish_reason": None}], **null_usage)

    if b.drip is not None:
        return itertools.chain([(0.0, delta({"role": "assistant", "content": ""}))],
                               itertools.repeat((b.drip, delta({}))))
    if b.endless_line:
        return itertools.chain([(0.0, delta({"role": "assistant", "content": ""})), (0.0, b"data: ")],
                               itertools.repeat((0.0, b"x" * 65536)))
    if isinstance(c.content, str):
        content = split_text(c.content, b.chunks) if c.content else []
    else:  # an odd reply's content goes in one piece
        content = [c.content]
    pieces = [{"reasoning_content": t} for t in c.reasoning] + [{"content": t} for t in content]
    for call in c.tool_calls:  # the first fragment names the call, the rest carry its arguments
        pieces.append({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                       "function": {"name": call["function"]["name"], "arguments": ""}}]})
        pieces += [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
                   for part in split_text(call["function"]["arguments"], 2)]
    gap = b.duration / len(pieces) if b.duration is not None else b.interval
    # A duration is spread over every piece, the first included; an interval only separates them.
    first_pause = b.first_delay + (gap if b.duration is not None else 0.0)
    events = [(0.0, delta({"role": "assistant", "content": ""}))]
    events += [(first_pause if i == 0 else gap, delta(p)) for i, p in enumerate(pieces)]

    first_content = 1 + len(c.reasoning)  # index of the first content event
    if b.break_after is not None:
        events[first_content + min(b.break_after, len(content)):] = [(0.0, None)]
    else:
        final = {"index": 0, "delta": {}, "finish_reason": c.finish_reason}
        if not b.top_usage:
            final["usage"] = c.usage  # Kimi's own place for stream usage: inside the last choice
        events.append((0.0, chunk([final], **null_usage)))
        if include_usage or b.top_usage:
            events.append((0.0, chunk([], usage=c.usage)))
        if not b.no_done:
            events.append((0.0, DONE))
        if b.done_then_silence:
            events.append((HANG_LIMIT_S, b""))
    if b.error_after is not None:
        at = first_content + min(b.error_after, len(content))
        error = {"error": {"message": error_message or ERROR_MESSAGES["engine_overloaded_error"],
                           "type": b.type or "engine_overloaded_error"}}
        events[at:] = [(0.0, _event(error))]
    for after, bad_event in ((b.malformed_after, _MALFORMED_EVENT), (b.misshapen_after, _MISSHAPEN_EVENT),
                             (b.garbage_after, _GARBAGE_EVENTS)):
        if after is not None:
            at = first_content + min(after, len(content))
            if at < len(events):  # not past a cut
                events.insert(at, (0.0, bad_event))
    return events
