"""Keeping the Moonshot key out of every upstream text we pass on: Moonshot's error messages
(and an OpenAI-compatible upstream's) sometimes quote the key they were sent, whole, glued to a
word, without its `sk-` prefix, or only its tail."""
from __future__ import annotations

import re

REDACTED = "[redacted]"
# A quoted key fragment shorter than this cannot identify the key; longer ones are removed.
FRAGMENT_CHARS = 8
# Runs of key-alphabet characters: a fragment of the key always sits inside one of these.
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/=]{%d,}" % FRAGMENT_CHARS)
# Key-shaped text that is not ours (another key the upstream mentions) and bearer tokens.
_KEY_LIKE = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+", re.IGNORECASE)


class KeyRedactor:
    """Replaces the configured key, and any run of text holding a fragment of it of
    FRAGMENT_CHARS or more characters, with "[redacted]"; then any other key-shaped text."""

    def __init__(self, key: str):
        secret = key.removeprefix("sk-")
        self._literals = [literal for literal in (key, secret) if literal]
        self._fragments = {secret[i:i + FRAGMENT_CHARS] for i in range(len(secret) - FRAGMENT_CHARS + 1)}

    def __call__(self, text: str) -> str:
        """`text` without the key or any part of it that could identify it."""
        for literal in self._literals:
            text = text.replace(literal, REDACTED)
        if self._fragments:
            text = _TOKEN.sub(self._redact_token, text)
        return _KEY_LIKE.sub(REDACTED, text)

    def _redact_token(self, match: re.Match) -> str:
        token = match.group()
        if any(token[i:i + FRAGMENT_CHARS] in self._fragments for i in range(len(token) - FRAGMENT_CHARS + 1)):
            return REDACTED
        return token
