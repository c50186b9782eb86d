"""Token estimates for what the upstream has not counted yet: a prompt before the call (to
reserve budget) and the text a stream relayed before it was cut short (to charge it).

No tokenizer: an estimate that errs high. One token per three UTF-8 bytes is about one per
Chinese character and one per three Latin letters, where Kimi's tokenizer counts fewer.
"""
from __future__ import annotations

import json
import math

BYTES_PER_TOKEN = 3
# Role markers and separators each message costs on top of its text.
PER_MESSAGE_TOKENS = 4
# An image or other non-text part, whose size in tokens its bytes do not tell.
PER_MEDIA_PART_TOKENS = 1000


def tokens_for_bytes(size: int) -> int:
    """The estimated tokens of `size` bytes of UTF-8 text."""
    return math.ceil(size / BYTES_PER_TOKEN)


def _content_bytes(content) -> tuple[int, int]:
    """(bytes of text, count of media parts) of a message's content: text or a list of parts."""
    if isinstance(content, str):
        return len(content.encode()), 0
    size = media = 0
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") == "text":
            size += len(str(part.get("text") or "").encode())
        else:
            media += 1
    return size, media


def prompt_tokens(payload: dict) -> int:
    """The estimated prompt tokens of an upstream chat payload: its messages' text (reasoning
    and tool calls included), its media parts and its tool definitions."""
    size = media = 0
    messages = payload.get("messages") or ()
    for message in messages:
        if not isinstance(message, dict):
            continue
        text, parts = _content_bytes(message.get("content"))
        size += text + len(str(message.get("reasoning_content") or "").encode())
        media += parts
        if message.get("tool_calls"):
            size += len(json.dumps(message["tool_calls"], ensure_ascii=False).encode())
    if payload.get("tools"):
        size += len(json.dumps(payload["tools"], ensure_ascii=False).encode())
    return tokens_for_bytes(size) + PER_MESSAGE_TOKENS * len(messages) + PER_MEDIA_PART_TOKENS * media


def output_budget(payload: dict, default_reserve: int) -> int:
    """The most output tokens the payload allows: its `max_completion_tokens` or `max_tokens`,
    else the configured default (TOKEN_BUDGET_OUTPUT_RESERVE)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default_reserve
