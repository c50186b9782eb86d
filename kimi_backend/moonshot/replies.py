"""Moonshot's reply shape, read here and nowhere else: what we accept from the upstream's
replies, and what the rest of the service reads from them (the first choice's text, its
finish reason, the usage). Valid JSON can still be unusable: text that UTF-8 cannot carry
(a lone surrogate escape), content that is not text, token counts that are negative,
fractional or astronomically large, a model id that is not an id. Each reply and stream chunk
is checked and made safe here, once, so nothing after the client meets it."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import orjson

# More tokens than any model's window many times over: a count past this is not a count.
MAX_TOKEN_COUNT = 10 ** 12
USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
_MODEL_ID = re.compile(r"^[A-Za-z0-9._:/\-]{1,128}$")
# The common stream chunk (see `plain_chunk`): these fields with scalar values, and choices of
# these members whose deltas carry these, as text or null.
_PLAIN_FIELDS = frozenset({"id", "object", "created", "model", "system_fingerprint", "choices", "usage"})
_PLAIN_CHOICE = frozenset({"index", "delta", "finish_reason"})
_PLAIN_DELTA = frozenset({"role", "content", "reasoning_content"})
# No float: orjson reads an integer past 64 bits as a float where json keeps it exact.
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})


class UnusableReply(ValueError):
    """The reply is JSON, but not a chat completion (or chunk) we can read."""


def may_hold_surrogates(raw: bytes) -> bool:
    """Whether JSON text could decode to a lone surrogate (only a `\\uD800`–`\\uDFFF` escape can)."""
    return b"\\ud" in raw or b"\\uD" in raw


def encodable(value: Any) -> Any:
    """`value` with every string made encodable as UTF-8: surrogate pairs joined, lone
    surrogates replaced by U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode()
            return value
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {encodable(key): encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [encodable(item) for item in value]
    return value


def text(value: Any) -> str | None:
    """Message content as text: a string, None, or a list of text parts (joined); anything
    else is not content."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, dict) for part in value):
        return "".join(part["text"] for part in value if part.get("type") == "text" and isinstance(part.get("text"), str))
    raise UnusableReply("content is neither text nor a list of text parts")


def usage(value: Any) -> dict | None:
    """The usage object when every count in it is a whole number in range; otherwise None
    (unknown), never a count that would corrupt totals or crash a counter."""
    if not isinstance(value, dict):
        return None
    for name in USAGE_COUNTS:
        count = value.get(name)
        if name in value and not (type(count) is int and 0 <= count <= MAX_TOKEN_COUNT):
            return None
    return value


def model(value: Any) -> str | None:
    """The reply's model id when it looks like one, else None (the model we asked for stands)."""
    return value if isinstance(value, str) and _MODEL_ID.match(value) else None


def completion(body: Any) -> dict:
    """A non-streamed reply with its first choice's message content as text, its usage
    checked and its model id sane; raises UnusableReply when it has no readable choice."""
    if not isinstance(body, dict):
        raise UnusableReply("the reply is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(choice, dict) for choice in choices):
        raise UnusableReply("the reply has no choices")
    for choice in choices:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise UnusableReply("a choice has no message")
        _clean_turn(message, choice)
    body["usage"] = usage(body.get("usage"))
    body["model"] = model(body.get("model"))
    return body


def chunk(body: Any) -> dict:
    """A stream chunk with its deltas' text checked, its usage (top level or in a choice)
    checked and its model id sane; raises UnusableReply for another shape."""
    if not isinstance(body, dict):
        raise UnusableReply("the chunk is not a JSON object")
    choices = body.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        raise UnusableReply("the chunk's choices are not a list of objects")
    for choice in choices:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise UnusableReply("a choice's delta is not an object")
        _clean_turn(delta, choice)
        choice["delta"] = delta
        if "usage" in choice:
            choice["usage"] = usage(choice["usage"])
    if "usage" in body:
        body["usage"] = usage(body["usage"])
    if "model" in body:
        body["model"] = model(body["model"])
    return body


def plain_chunk(data: bytes) -> dict | None:
    """`chunk(json.loads(data))` for the common chunk (scalar fields, no usage object, and
    choices whose deltas carry only text), read for a third of the cost; None for any other
    JSON, or none, which the general path reads (and refuses when it is not a chunk)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:  # also what orjson reads differently: NaN, lone surrogates, deep nesting
        return None
    if type(body) is not dict or not _PLAIN_FIELDS.issuperset(body):
        return None
    for name, value in body.items():
        if type(value) not in _PLAIN_SCALARS and name != "choices":
            return None
    choices = body.get("choices")
    if choices is not None:
        if type(choices) is not list:
            return None
        for choice in choices:
            if type(choice) is not dict or not _PLAIN_CHOICE.issuperset(choice) \
                    or type(choice.get("index", 0)) is not int or not _is_text(choice.get("finish_reason")):
                return None
            delta = choice.get("delta")
            if type(delta) is not dict or not _PLAIN_DELTA.issuperset(delta) or not all(map(_is_text, delta.values())):
                return None
    if "usage" in body:
        body["usage"] = None  # a scalar: not a usage object
    if "model" in body:
        body["model"] = _scalar_model(body["model"])
    return body


@functools.lru_cache(maxsize=64)
def _scalar_model(value: str | int | bool | None) -> str | None:
    # `model` for a plain chunk's scalar: a stream repeats one id in every chunk, so its check
    # (a regular expression) runs once per id instead of once per chunk.
    return model(value)


def _is_text(value: Any) -> bool:
    return value is None or type(value) is str


def _clean_turn(message: dict, choice: dict) -> None:
    for name in ("content", "reasoning_content"):
        if name in message:
            message[name] = text(message[name])
    if not isinstance(choice.get("finish_reason"), (str, type(None))):
        choice["finish_reason"] = None


class TextShape:
    """A text-only chunk's shape (see `TextTemplates`): the payload's bytes `before` and
    `after` the text's JSON string, the delta member the text is in (`name`) and its `kind`,
    and the chunk it was learnt from, read in full. `rendered`: for the events that render
    such chunks whole (`api/openai.py`), their rendering's bytes around the text."""

    __slots__ = ("before", "after", "name", "kind", "chunk", "rendered", "start", "stop", "least")

    def __init__(self, before: bytes, after: bytes, name: str, kind: str, chunk: dict):
        self.before, self.after, self.name, self.kind, self.chunk = before, after, name, kind, chunk
        self.rendered: tuple[bytes, bytes] | None = None
        # Where the text's JSON string is in a payload of this shape (`after` is never empty:
        # it holds at least the closing braces), and the shortest such payload.
        self.start, self.stop, self.least = len(before), -len(after), len(before) + len(after) + 1

    def with_text(self, text: str) -> dict:
        """The chunk of this shape carrying `text`: what reading such a chunk in full gives."""
        choice = self.chunk["choices"][0]
        return {**self.chunk, "choices": [{**choice, "delta": {**choice["delta"], self.name: text}}]}


class TextDelta(NamedTuple):
    """A stream chunk that only adds text to the first choice (`kind`: "content" or
    "reasoning"): what `TextTemplates` reads off a chunk of a learnt `shape`."""

    kind: str
    text: str
    shape: TextShape


# The members a text delta's text is in, and their kinds.
_TEXT_KEYS = ((b'"content":', "content", "content"), (b'"reasoning_content":', "reasoning_content", "reasoning"))


class TextTemplates:
    """The shapes of a stream's text-only chunks, learnt from chunks read in full: the
    bytes before and after the text's JSON string. Kimi's chunks repeat everything but the
    text (id, created, model, the choice's index and null finish reason), so a later chunk
    that starts and ends with the same bytes around one JSON string is that chunk with its
    text changed: reading the string alone gives what reading the whole chunk would, at a
    fraction of the cost, and no dict is built. (A JSON string is a token that ends at its
    first unescaped quote, so a middle that reads as one string alone is one string there.)"""

    def __init__(self) -> None:
        self._shapes: list[TextShape] = []

    def read(self, payload: bytes) -> TextDelta | None:
        """The text delta `payload` is when it has a learnt shape and non-empty text; None
        otherwise (read it in full)."""
        for shape in self._shapes:
            if payload.startswith(shape.before) and payload.endswith(shape.after) and len(payload) >= shape.least:
                try:
                    text = orjson.loads(payload[shape.start:shape.stop])
                except orjson.JSONDecodeError:  # not one string (or a lone surrogate): read in full
                    return None
                return TextDelta(shape.kind, text, shape) if type(text) is str and text else None
        return None

    def learn(self, payload: bytes, chunk: dict) -> None:
        """Keeps the shape of a plain chunk (`plain_chunk(payload)`) that only adds
        non-empty text to its one choice: index 0, no finish reason, no usage, one text
        member in its delta (a role may be there too)."""
        if len(self._shapes) == len(_TEXT_KEYS) or chunk.get("usage") is not None:
            return  # one shape per kind is kept
        choices = chunk.get("choices")
        if type(choices) is not list or len(choices) != 1:
            return
        choice = choices[0]
        delta = choice.get("delta")
        if choice.get("index", 0) != 0 or choice.get("finish_reason") is not None or type(delta) is not dict:
            return
        present = [entry for entry in _TEXT_KEYS if entry[1] in delta]
        if len(present) != 1 or not delta[present[0][1]]:
            return
        key, name, kind = present[0]
        if any(known.kind == kind for known in self._shapes):
            return
        start = payload.find(key)
        if start < 0 or payload.find(key, start + 1) >= 0:
            return  # a member name can only be outside strings, but keep to the plain case
        start += len(key)
        while payload[start:start + 1] in (b" ", b"\t", b"\r", b"\n"):  # JSON's whitespace, kept in the shape
            start += 1
        end = _string_end(payload, start)
        if end is None or orjson.loads(payload[start:end]) != delta[name]:
            return
        self._shapes.append(TextShape(payload[:start], payload[end:], name, kind, chunk))


def _string_end(payload: bytes, start: int) -> int | None:
    """The index after the JSON string that starts at `payload[start]`, or None when no
    string starts there."""
    if payload[start:start + 1] != b'"':
        return None
    pos = start + 1
    while True:
        quote = payload.find(b'"', pos)
        if quote < 0:
            return None
        backslashes = 0
        while payload[quote - 1 - backslashes] == 0x5C:  # a quote after an odd run of backslashes is escaped
            backslashes += 1
        if not backslashes % 2:
            return quote + 1
        pos = quote + 1


@dataclass(frozen=True)
class Answer:
    """The first choice of a checked non-streamed reply (see `completion`)."""

    content: str | None
    reasoning: str | None
    finish_reason: str | None


def first_answer(body: dict) -> Answer:
    """The first choice's text, reasoning and finish reason of a checked reply."""
    choice = body["choices"][0]
    message = choice["message"]
    return Answer(message.get("content"), message.get("reasoning_content"), choice.get("finish_reason"))


def carries_something(chunk: dict) -> bool:
    """Whether a checked chunk moves the reply on: text, reasoning, a finish, usage, or tool calls."""
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        delta = choice["delta"]
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls") \
                or choice.get("finish_reason") or choice.get("usage") or delta.get("role"):
            return True
    return False


def first_choice_texts(chunk: dict) -> Iterator[tuple[str, str]]:
    """The text a checked chunk adds to the first choice, in order: ("reasoning", text) and
    ("content", text), each only when not empty."""
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) == 0:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                yield "reasoning", delta["reasoning_content"]
            if delta.get("content"):
                yield "content", delta["content"]


class StreamTally:
    """What a stream's checked chunks have said so far about the first choice: its usage,
    its finish reason and the size of the text generated."""

    def __init__(self) -> None:
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self.text_bytes = 0  # prices a stream cut short before its usage arrived

    def add(self, chunk: dict) -> None:
        """Counts one chunk in."""
        # Moonshot puts usage inside the last choice; OpenAI-style servers send a top-level
        # usage chunk. Read both.
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                self.usage = choice.get("usage") or self.usage
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
                self.text_bytes += _text_bytes(choice.get("delta"))

    def add_text(self, text: str) -> None:
        """Counts a text delta in (`TextDelta`: no usage, no finish reason)."""
        self.text_bytes += _utf8_size(text)


def _utf8_size(text: str) -> int:
    """The size of `text` in UTF-8, without encoding it when it is ASCII."""
    return len(text) if text.isascii() else len(text.encode())


def _text_bytes(delta) -> int:
    """How much generated text a checked chunk's delta carries (answer, reasoning, tool-call
    arguments), in bytes: what a stream cut short before its usage is charged for."""
    size = 0
    for value in (delta.get("content"), delta.get("reasoning_content")):
        if value:  # text or None once checked (see `chunk`)
            size += _utf8_size(value)
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            size += len(str(function.get("arguments") or "").encode())
    return size
