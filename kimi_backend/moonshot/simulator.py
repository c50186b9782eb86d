"""Offline look-alike of Moonshot AI's Kimi REST API, speaking the real wire format.

One plain WSGI app (no Flask, so it stays cheap per request) serves three uses:
the service's upstream when no API key is configured (`start_in_thread`), the test
suite's upstream over loopback, and the benchmarks' upstream as its own gevent process
(`python -m kimi_backend.moonshot.simulator --port 9100`).

Behaviour is steered per request by `sim:key=value` tokens in the last user message
(see `DIRECTIVES`), or by a queue of scripted behaviours (`Simulator.script`).
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import itertools
import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Iterable

from ..peer import peer_closed
from .models import CURRENT, model_item

OFFLINE_NOTICE = "[offline simulator]"


# What the upstream serves today: the model table's current models, nothing retired.
MODELS = [model_item(facts) for facts in CURRENT]
_SERVED = {facts.id: facts for facts in CURRENT}
_ROLES = {"system", "user", "assistant", "tool"}
_DEFAULT_MAX_TOKENS = 1024  # what Moonshot assumes when max_tokens is omitted
_HANG_LIMIT_S = 300.0       # Moonshot's own gateway gives up after about 5 minutes (504)
_MALFORMED_EVENT = b"data: {not json\n\n"
# Not SSE at all: a line of another field, a line of invalid UTF-8, a bare CR and a comment,
# all of which an SSE reader must skip without ending the stream.
_GARBAGE_EVENTS = b"event: ping\n\xff\xfe\xfd not utf-8\n\r: comment\r\n\n"
_MISSHAPEN_EVENT = b'data: {"object": "chat.completion.chunk", "choices": "not a list"}\n\n'
_DONE_EVENT = b"data: [DONE]\n\n"


# ---------------------------------------------------------------- errors

class ApiError(Exception):
    """A Moonshot-style error reply: HTTP status plus {"error": {"message", "type"}}."""

    def __init__(self, status: int, type_: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


def _invalid(message: str) -> ApiError:
    """400 invalid_request_error with the given message."""
    return ApiError(400, "invalid_request_error", message)


_DEFAULT_ERROR_TYPE = {400: "invalid_request_error", 401: "invalid_authentication_error",
                       403: "permission_denied_error", 404: "resource_not_found_error",
                       429: "rate_limit_reached_error"}
# Message templates from Moonshot's error tables; {model} and {retry} are filled in.
_ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request: simulated error",
    "invalid_authentication_error": "Invalid Authentication",
    "incorrect_api_key_error": "Incorrect API key provided",
    "permission_denied_error": "The API you are accessing is not open",
    "resource_not_found_error": "Not found the model {model} or Permission denied",
    "rate_limit_reached_error": ("Your account org-sim<ak-sim> request reached organization max RPM: 3, "
                                 "please try again after {retry} seconds"),
    "exceeded_current_quota_error": ("Your account is suspended due to insufficient balance, "
                                     "please recharge your account or check your plan and billing details"),
    "engine_overloaded_error": "The engine is currently overloaded, please try again later",
    "content_filter": "The request was rejected because it was considered high risk",
    "server_error": "Internal server error, please try again later",
    "unexpected_output": "invalid state transition",
}


def _seconds(value: float) -> str:
    """Formats seconds as Moonshot and Retry-After do: "1", or "0.5" when fractional."""
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------- directives and request parsing

# Directive name -> value kind. Flags (bool) take no value; "_" in text values means a space.
DIRECTIVES = {
    "status": int, "type": str, "message": str, "retry_after": float,
    "delay": float, "hang": bool,
    "chunks": int, "interval": float, "duration": float, "first_delay": float, "reasoning": int,
    "break_after": int, "malformed_after": int, "misshapen_after": int, "no_done": bool, "top_usage": bool,
    "reply": str, "repeat": int, "cached": int, "html": bool,
    # Faults (see Behaviour): broken bodies, odd-but-valid JSON, echoed keys, endless replies.
    "body": str, "odd": str, "echo_key": str, "error_after": int, "drip": float, "endless_line": bool,
    "garbage_after": int, "retry_after_header": str, "done_then_silence": bool,
}
BODY_FAULTS = ("cut", "stall", "drip", "malformed")
ODD_REPLIES = ("negative_usage", "huge_usage", "float_usage", "surrogate", "list_content", "number_content",
               "null_content", "odd_model")
KEY_ECHOES = ("plain", "glued", "bare", "tail")


@dataclass
class Behaviour:
    """What one chat request should do; built from directives or from a script item."""
    status: int | None = None
    type: str | None = None
    message: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    hang: bool = False
    chunks: int = 8
    interval: float = 0.0
    duration: float | None = None
    first_delay: float = 0.0
    reasoning: int | None = None  # steps of reasoning; default: one when the model thinks
    break_after: int | None = None
    malformed_after: int | None = None
    misshapen_after: int | None = None  # valid JSON in the wrong shape
    no_done: bool = False
    top_usage: bool = False
    reply: str | None = None
    repeat: int = 1
    cached: int = 0
    html: bool = False  # an error answered with an HTML page, as Moonshot's gateway does for its 504
    body: str | None = None  # a non-streamed body that is cut, stalls, drips forever or is not JSON
    odd: str | None = None  # valid JSON that is odd (ODD_REPLIES), in the reply or the stream's deltas
    echo_key: str | None = None  # the error message quotes the caller's key (KEY_ECHOES)
    error_after: int | None = None  # a stream sends an error event after this many content chunks
    drip: float | None = None  # a stream sends content-less chunks this often, forever
    endless_line: bool = False  # a stream sends one line that never ends
    garbage_after: int | None = None  # a stream sends non-SSE lines after this many content chunks
    retry_after_header: str | None = None  # the Retry-After header exactly as given ("inf", "1e400")
    done_then_silence: bool = False  # a stream sends [DONE] and then neither ends nor sends anything


def parse_directives(text: str) -> dict:
    """The `sim:key=value` / `sim:flag` tokens in a message, as {key: str or True}."""
    found = {}
    for token in text.split():
        if token.startswith("sim:"):
            key, has_value, value = token[4:].partition("=")
            if key in ("message", "reply"):
                value = value.replace("_", " ")
            found[key] = value if has_value else True
    return found


def strip_directives(text: str) -> str:
    """The message without its directive tokens (what the default reply echoes)."""
    return " ".join(token for token in text.split() if not token.startswith("sim:"))


def make_behaviour(settings: dict) -> Behaviour:
    """Checks and converts directive/script values; raises ValueError naming the bad one."""
    behaviour = Behaviour()
    for key, value in settings.items():
        kind = DIRECTIVES.get(key)
        if kind is None:
            raise ValueError(f"unknown simulator directive sim:{key}")
        if kind is bool:
            flag = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            setattr(behaviour, key, flag)
            continue
        try:
            if isinstance(value, bool):  # a bare `sim:delay` has no value to convert
                raise ValueError
            converted = kind(value)
            # One bound rejects negatives, NaN and inf (time.sleep(inf) would raise).
            if kind is not str and not 0 <= converted <= 1_000_000:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"bad value for simulator directive sim:{key}={value}") from None
        setattr(behaviour, key, converted)
    if behaviour.status is not None and not 400 <= behaviour.status <= 599:
        raise ValueError("sim:status must be an HTTP error code (400-599)")
    if behaviour.chunks < 1 or behaviour.repeat < 1:
        raise ValueError("sim:chunks and sim:repeat must be at least 1")
    for name, allowed in (("body", BODY_FAULTS), ("odd", ODD_REPLIES), ("echo_key", KEY_ECHOES)):
        if getattr(behaviour, name) not in (None, *allowed):
            raise ValueError(f"sim:{name} must be one of {', '.join(allowed)}")
    if behaviour.drip == 0:
        raise ValueError("sim:drip must be a positive number of seconds")
    return behaviour


def text_of(content) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def count_tokens(text: str) -> int:
    """A deterministic stand-in for the tokenizer: about four characters per token."""
    return max(1, len(text) // 4)


def _check_content(position: int, message: dict) -> None:
    """Rejects empty or malformed content the way Moonshot does."""
    role, content = message["role"], message.get("content")
    if role == "assistant" and message.get("tool_calls") and content in (None, ""):
        return
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _invalid(f"Invalid request: the message at position {position} has a malformed content part")
            if part["type"] == "text" and not part.get("text"):
                raise _invalid("Invalid request: text content is empty")
    elif content is not None and not isinstance(content, str):
        raise _invalid(f"Invalid request: the message at position {position} has content of an unsupported type")
    if not content:
        raise _invalid(f"Invalid request: the message at position {position} with role '{role}' must not be empty")


def _check_unit_range(body: dict, name: str) -> None:
    """temperature and top_p: a number in [0, 1] when present."""
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        raise _invalid(f"Invalid request: {name} must be a number in [0, 1]")


@dataclass
class ChatRequest:
    """The parts of a validated chat request the reply depends on."""
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    last_user_text: str
    thinking: bool = False
    tool: str | None = None         # the function to call: tools were offered and the user spoke last
    tool_calls_so_far: int = 0      # for Kimi's tool-call ids, `functions.<name>:<n>` across the conversation
    tool_result: str | None = None  # the tool's answer, when a tool message is last
    json_mode: bool = False
    partial: bool = False           # the last message is an assistant prefix to continue


def _check_thinking(body: dict, facts) -> bool:
    """Whether the model thinks for this request; refuses what Moonshot refuses."""
    thinking = body.get("thinking")
    if thinking is None:
        return facts.thinking != "none"
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled"):
        raise _invalid("Invalid request: thinking.type must be 'enabled' or 'disabled'")
    if kind == "disabled" and facts.thinking == "always":
        raise _invalid(f"Invalid request: thinking cannot be disabled for model {facts.id}")
    if kind == "enabled" and facts.thinking == "none":
        raise _invalid(f"Invalid request: model {facts.id} does not support thinking")
    return kind == "enabled"


def _check_fixed_sampling(body: dict, facts, thinking: bool) -> None:
    """Fixed-sampling models refuse any value but their own, in Moonshot's words."""
    fixed = dict(facts.fixed_sampling)
    if fixed and not thinking:
        fixed["temperature"] = 0.6  # k2.6 with thinking off
    for name, value in fixed.items():
        if name in body and body[name] != value:
            shown = _seconds(value)
            raise _invalid(f"invalid {name}: only {shown} is allowed for this model")


def _check_tools(body: dict, messages: list, facts, thinking: bool) -> None:
    """tool_choice "required" only where the model accepts it; with thinking on, replayed
    tool-call turns must carry their reasoning."""
    if body.get("tool_choice") == "required" and not facts.tool_choice_required:
        raise _invalid("Invalid request: tool_choice 'required' is incompatible with thinking enabled")
    if not thinking:
        return
    for index, message in enumerate(messages):
        if message.get("role") == "assistant" and message.get("tool_calls") and not message.get("reasoning_content"):
            raise _invalid("thinking is enabled but reasoning_content is missing in assistant tool call message "
                           f"at index {index}")


def validate_chat(body) -> ChatRequest:
    """Validates a chat body like Moonshot (400 invalid_request_error, 404 unknown model)."""
    if not isinstance(body, dict):
        raise _invalid("Invalid request: the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("Invalid request: model is required")
    facts = _SERVED.get(model)
    if facts is None:  # unknown or retired
        raise ApiError(404, "resource_not_found_error", f"Not found the model {model} or Permission denied")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("Invalid request: messages must be a non-empty list")
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _invalid(f"Invalid request: the message at position {position} must have a role "
                           "of system, user, assistant or tool")
        _check_content(position, message)
    _check_unit_range(body, "temperature")
    _check_unit_range(body, "top_p")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 5:
        raise _invalid("Invalid request: n must be an integer between 1 and 5")
    thinking = _check_thinking(body, facts)
    _check_fixed_sampling(body, facts, thinking)
    _check_tools(body, messages, facts, thinking)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = _DEFAULT_MAX_TOKENS
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _invalid("Invalid request: max_tokens must be a positive integer")
    prompt_tokens = sum(count_tokens(text_of(m.get("content"))) + 3 for m in messages)
    if prompt_tokens + max_tokens > facts.context_length:
        raise _invalid(f"Your request exceeded model token limit : {facts.context_length}")
    user_texts = [text_of(m.get("content")) for m in messages if m["role"] == "user"]
    stream_options = body.get("stream_options")
    tools = [t["function"]["name"] for t in body.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")]
    last = messages[-1]
    response_format = body.get("response_format")
    return ChatRequest(
        model=model, stream=body.get("stream") is True,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        prompt_tokens=prompt_tokens, last_user_text=user_texts[-1] if user_texts else "", thinking=thinking,
        tool=tools[0] if tools and body.get("tool_choice") != "none" and last["role"] == "user" else None,
        tool_calls_so_far=sum(len(m.get("tool_calls") or ()) for m in messages),
        tool_result=text_of(last.get("content")) if last["role"] == "tool" else None,
        json_mode=isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"),
        partial=last["role"] == "assistant" and last.get("partial") is True)


# ---------------------------------------------------------------- replies

@dataclass
class Completion:
    """One generated reply, shared by the JSON and the SSE renderings."""
    model: str
    content: Any  # a string, except in odd replies
    reasoning: list[str]
    usage: dict
    tool_calls: list = field(default_factory=list)
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def finish_reason(self) -> str:
        """"tool_calls" when the reply calls a tool, else "stop"."""
        return "tool_calls" if self.tool_calls else "stop"


def make_completion(request: ChatRequest, behaviour: Behaviour) -> Completion:
    """Builds the reply text, thinking text and deterministic usage for a request."""
    said = strip_directives(request.last_user_text)[:200]
    body = behaviour.reply if behaviour.reply is not None else \
        f"The tool said: {request.tool_result}" if request.tool_result is not None else f"You said: {said}"
    content = f"{OFFLINE_NOTICE} " + " ".join([body] * behaviour.repeat)
    tool_calls = []
    if request.tool:  # call the first tool offered, with the user's words as its argument
        tool_calls = [{"id": f"functions.{request.tool}:{request.tool_calls_so_far}", "type": "function",
                       "function": {"name": request.tool, "arguments": json.dumps({"query": said}, ensure_ascii=False)}}]
        content = ""
    elif request.json_mode:
        content = json.dumps({"offline": True, "reply": content}, ensure_ascii=False)
    elif request.partial:  # the reply continues the prefix and does not repeat it
        content = f" (continued) {content}"
    steps = behaviour.reasoning if behaviour.reasoning is not None else int(request.thinking)
    reasoning = [f"Thinking step {i + 1} (offline). " for i in range(steps)]
    completion_tokens = count_tokens(content + json.dumps(tool_calls)) + (count_tokens("".join(reasoning)) if reasoning else 0)
    usage = {"prompt_tokens": request.prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": request.prompt_tokens + completion_tokens}
    if behaviour.cached:  # Moonshot puts cached_tokens at the top level of usage, and only when > 0
        usage["cached_tokens"] = min(behaviour.cached, request.prompt_tokens)
    completion = Completion(request.model, content, reasoning, usage, tool_calls)
    return _odd(completion, behaviour.odd) if behaviour.odd else completion


def _odd(c: Completion, odd: str) -> Completion:
    """The reply made odd but still valid JSON, as a careless or hostile upstream might send it."""
    changes = {
        "negative_usage": {"usage": {"prompt_tokens": -5, "completion_tokens": -7, "total_tokens": -12}},
        "huge_usage": {"usage": {"prompt_tokens": 10 ** 400, "completion_tokens": 10 ** 20, "total_tokens": 10 ** 400}},
        "float_usage": {"usage": {"prompt_tokens": 3.5, "completion_tokens": "12", "total_tokens": None}},
        "surrogate": {"content": c.content + " \ud800"},  # sent as a lone "\ud800" escape
        "list_content": {"content": [{"type": "text", "text": c.content}]},
        "number_content": {"content": 42},
        "null_content": {"content": None},
        "odd_model": {"model": "odd-" + uuid.uuid4().hex},
    }[odd]
    return dataclasses.replace(c, **changes)


def echoed_key(key: str, echo: str) -> str:
    """An error message quoting the caller's key the way some upstreams do (KEY_ECHOES)."""
    return {"plain": f"Incorrect API key provided: {key}",
            "glued": f"invalid_key_{key} rejected",
            "bare": f"key {key.removeprefix('sk-')} is not valid",
            "tail": f"the key ending in ...{key[-10:]} is not valid"}[echo]


def completion_json(c: Completion) -> dict:
    """The non-stream chat.completion object."""
    message = {"role": "assistant", "content": c.content}
    if c.reasoning:
        message["reasoning_content"] = "".join(c.reasoning)
    if c.tool_calls:
        message["tool_calls"] = c.tool_calls
    return {"id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
            "choices": [{"index": 0, "message": message, "finish_reason": c.finish_reason}], "usage": c.usage}


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


def _encode_json(obj) -> bytes:
    """JSON as UTF-8; text that UTF-8 cannot carry (a lone surrogate in an odd reply) is sent
    as \\u escapes, which is still valid JSON."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def _sse(obj: dict) -> bytes:
    """One `data: <json>` event."""
    return b"data: " + _encode_json(obj) + b"\n\n"


def stream_events(c: Completion, b: Behaviour, include_usage: bool,
                  error_message: str | None = None) -> Iterable[tuple[float, bytes | None]]:
    """Lays out one stream as (pause before it, event bytes) pairs; None marks the connection cut.
    A list, except for the endless faults (sim:drip, sim:endless_line), which never end."""
    # With include_usage Moonshot follows OpenAI: "usage": null on every chunk but the extra one.
    null_usage = {"usage": None} if include_usage else {}

    def chunk(choices: list, **extra) -> bytes:
        return _sse({"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
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
            events.append((0.0, _DONE_EVENT))
        if b.done_then_silence:
            events.append((_HANG_LIMIT_S, b""))
    if b.error_after is not None:
        at = first_content + min(b.error_after, len(content))
        error = {"error": {"message": error_message or _ERROR_MESSAGES["engine_overloaded_error"],
                           "type": b.type or "engine_overloaded_error"}}
        events[at:] = [(0.0, _sse(error))]
    for after, bad_event in ((b.malformed_after, _MALFORMED_EVENT), (b.misshapen_after, _MISSHAPEN_EVENT),
                             (b.garbage_after, _GARBAGE_EVENTS)):
        if after is not None:
            at = first_content + min(after, len(content))
            if at < len(events):  # not past a cut
                events.insert(at, (0.0, bad_event))
    return events


def _pause_unless_client_left(seconds: float, environ: dict) -> bool:
    """Sleeps between events, like a model generating; returns False as soon as the client
    closes its connection (as the real service stops generating when a caller hangs up).
    Only werkzeug's server exposes the socket; elsewhere this is a plain sleep."""
    sock = environ.get("werkzeug.socket")
    if sock is None:
        time.sleep(seconds)
        return True
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        closed = peer_closed(sock, remaining)
        if closed:
            return False
        if closed is False:
            time.sleep(min(remaining, 0.01))  # pipelined bytes, not a close: keep pausing
    return True


def _cut_connection(environ: dict) -> None:
    """Drops the client connection mid-response, without the chunked terminator."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    # werkzeug treats ConnectionError as "connection dropped" and gevent.pywsgi ignores ECONNRESET;
    # both then close the socket without writing the final "0\r\n\r\n", so the client sees a truncated body.
    raise ConnectionResetError(errno.ECONNRESET, "simulated connection break (sim:break_after)")


# ---------------------------------------------------------------- the WSGI app

def _zero_stats() -> dict:
    """Fresh counters."""
    return {"chat_requests": 0, "stream_requests": 0, "models_requests": 0, "streams_started": 0,
            "streams_completed": 0, "streams_aborted": 0, "open_streams": 0, "in_flight": 0,
            "abandoned_before_headers": 0, "last_request": None}


def _request_headers(environ: dict) -> dict:
    """The request headers by name, with the Authorization value hidden."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key
        else:
            continue
        name = name.replace("_", "-").title()
        headers[name] = "***" if name == "Authorization" else value
    return headers


def _read_json(environ: dict):
    """The request body parsed as JSON, or None when it is absent or not JSON."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ["wsgi.input"]
    if length > 0:
        raw = stream.read(length)
    elif environ.get("wsgi.input_terminated"):  # chunked upload: the server marks where it ends
        raw = stream.read()
    else:
        raw = b""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _status_line(code: int) -> str:
    """"429 Too Many Requests"; codes unknown to HTTPStatus get a generic phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Error"


def _json_response(start_response, status: int, payload: dict, extra_headers: list = ()) -> list[bytes]:
    """A JSON reply with Moonshot's headers."""
    data = _encode_json(payload)
    start_response(_status_line(status), [
        ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(data))),
        ("Msh-Request-Id", str(uuid.uuid4())), *extra_headers])
    return [data]


def _faulty_json_response(start_response, environ: dict, payload: dict, behaviour: Behaviour):
    """A 200 JSON reply whose body goes wrong after the headers (sim:body): `cut` (the
    connection closes halfway through the promised length), `stall` (half, then silence until
    the client leaves), `drip` (a byte every sim:interval seconds, forever) or `malformed`
    (a complete body that is not JSON)."""
    data = _encode_json(payload)
    if behaviour.body == "malformed":
        data = data[: len(data) // 2]
    length = 10 ** 9 if behaviour.body == "drip" else len(data)
    start_response("200 OK", [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(length))])
    if behaviour.body == "drip":
        gap = behaviour.interval or 0.2
        return ((gap, bytes([byte])) for byte in itertools.cycle(data))
    if behaviour.body == "malformed":
        return [(0.0, data)]
    half = [(0.0, data[: len(data) // 2])]
    return half + ([(0.0, None)] if behaviour.body == "cut" else [(_HANG_LIMIT_S, b"")])


def _html_response(start_response, status: int) -> list[bytes]:
    """A gateway's HTML error page (Moonshot's long-request 504 looks like this)."""
    data = (f"<html><head><title>{_status_line(status)}</title></head><body><center><h1>{_status_line(status)}"
            "</h1></center><hr><center>nginx</center></body></html>").encode()
    start_response(_status_line(status), [("Content-Type", "text/html"), ("Content-Length", str(len(data)))])
    return [data]


def _error_response(start_response, error: ApiError, extra_headers: list = ()) -> list[bytes]:
    """An ApiError as Moonshot's error body, with Retry-After when set."""
    headers = list(extra_headers)
    if error.retry_after is not None:
        headers.append(("Retry-After", _seconds(error.retry_after)))
    return _json_response(start_response, error.status,
                          {"error": {"message": error.message, "type": error.type}}, headers)


class Simulator:
    """The WSGI app. Stats and the script queue are shared, directives are per request."""

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self._lock = threading.Lock()
        self._stats = _zero_stats()
        self._script: deque[Behaviour] = deque()
        self._models_script: deque[Behaviour] = deque()
        self._released = threading.Event()  # set on server stop, so hung requests let go
        # False: answer /v1/models with a 404, like OpenAI-compatible servers that have no list.
        self.serves_models = True
        self._routes = {"/v1/chat/completions": ("POST", self._chat), "/v1/models": ("GET", self._models),
                        "/_sim/stats": ("GET", self._control_stats), "/_sim/reset": ("POST", self._control_reset),
                        "/_sim/script": ("POST", self._control_script)}

    # -- control surface

    def stats(self) -> dict:
        """A consistent snapshot of the counters (last_request dicts are never mutated once stored)."""
        with self._lock:
            return dict(self._stats)

    def reset(self) -> None:
        """Zeroes the counters, clears the script queue and serves /v1/models again; open_streams
        stays, as it is a live gauge."""
        with self._lock:
            open_streams, in_flight = self._stats["open_streams"], self._stats["in_flight"]
            self._stats = _zero_stats()
            self._stats["open_streams"] = open_streams
            self._stats["in_flight"] = in_flight
            self._script.clear()
            self._models_script.clear()
        self.serves_models = True

    def script(self, responses: list[dict]) -> None:
        """Queues behaviours for the next chat requests, one each, in order.

        Items take the directive names as keys, e.g. {"status": 503, "retry_after": 1} or {} for a
        normal reply; a scripted item replaces the request's own directives.
        """
        if not isinstance(responses, list) or not all(isinstance(r, dict) for r in responses):
            raise ValueError("responses must be a list of objects")
        behaviours = [make_behaviour(r) for r in responses]
        with self._lock:
            self._script.extend(behaviours)

    def script_models(self, responses: list[dict]) -> None:
        """Queues behaviours for the next `/v1/models` requests (status, delay, hang, body)."""
        if not isinstance(responses, list) or not all(isinstance(r, dict) for r in responses):
            raise ValueError("responses must be a list of objects")
        behaviours = [make_behaviour(r) for r in responses]
        with self._lock:
            self._models_script.extend(behaviours)

    def _count(self, **deltas: int) -> None:
        """Adds to counters under the lock."""
        with self._lock:
            for key, delta in deltas.items():
                self._stats[key] += delta

    def _release_waiters(self) -> None:
        """Ends every sim:hang early (used when the server stops)."""
        self._released.set()

    # -- WSGI

    def __call__(self, environ, start_response):
        """Routes one request; every failure leaves as a Moonshot-shaped error."""
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        try:
            if path not in self._routes:
                raise ApiError(404, "resource_not_found_error", f"Not found the url {path}")
            allowed, handler = self._routes[path]
            if method != allowed:
                return _error_response(start_response, ApiError(
                    405, "invalid_request_error", f"Method {method} is not allowed for {path}"), [("Allow", allowed)])
            body = _read_json(environ) if method == "POST" else None
            if path.startswith("/_sim/"):  # polling the control endpoints must not hide the real request
                return handler(environ, start_response, body)
            record = {"path": path, "body": body, "headers": _request_headers(environ)}
            with self._lock:
                self._stats["last_request"] = record
        except ApiError as error:
            return _error_response(start_response, error)
        return self._in_flight(handler, environ, start_response, body)

    def _in_flight(self, handler, environ, start_response, body):
        """Serves an API request, counted in `in_flight` until its reply is over (sent, cut,
        or abandoned by the client), so tests can see that a caller let go of the connection."""
        self._count(in_flight=1)
        try:
            reply = handler(environ, start_response, body)
        except ApiError as error:
            reply = _error_response(start_response, error)
        except BaseException:
            self._count(in_flight=-1)
            raise
        return self._until_done(reply)

    def _until_done(self, reply):
        try:
            yield from reply
        finally:
            close = getattr(reply, "close", None)
            if close is not None:
                close()
            self._count(in_flight=-1)

    def _authorize(self, environ) -> None:
        """Bearer key check: exact match when configured, else any `sk-` key."""
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        key = key.strip()
        valid = key == self.api_key if self.api_key else key.startswith("sk-")
        if scheme.lower() != "bearer" or not valid:
            raise ApiError(401, "invalid_authentication_error", "Invalid Authentication")

    def _models(self, environ, start_response, _body):
        """GET /v1/models, shaped by the next `script_models` item when there is one."""
        self._count(models_requests=1)
        if not self.serves_models:
            raise ApiError(404, "resource_not_found_error", "Not found the url /v1/models")
        self._authorize(environ)
        with self._lock:
            behaviour = self._models_script.popleft() if self._models_script else Behaviour()
        self._wait(behaviour, environ)
        if behaviour.status is not None:
            raise ApiError(behaviour.status, behaviour.type or _DEFAULT_ERROR_TYPE.get(behaviour.status, "server_error"),
                           behaviour.message or "Simulated error", behaviour.retry_after)
        payload = {"object": "list", "data": MODELS}
        if behaviour.body:
            return self._play(_faulty_json_response(start_response, environ, payload, behaviour), environ, stream=False)
        return _json_response(start_response, 200, payload)

    def _wait(self, behaviour: Behaviour, environ: dict) -> None:
        """sim:hang and sim:delay: silence before the status line. A delay ends early when the
        caller hangs up (as Moonshot stops work on a request nobody waits for)."""
        if behaviour.hang:
            # An Event instead of a sleep loop: one wake-up per hung request (cheap under load), and stop() ends it.
            self._released.wait(_HANG_LIMIT_S)
            raise ApiError(504, "server_error", "Gateway timeout (simulated hang)")
        if behaviour.delay and not _pause_unless_client_left(behaviour.delay, environ):
            self._count(abandoned_before_headers=1)
            raise ApiError(499, "invalid_request_error", "The caller closed the connection (simulated)")

    def _chat(self, environ, start_response, body):
        """POST /v1/chat/completions: validate, apply the behaviour, answer as JSON or SSE."""
        streaming = isinstance(body, dict) and body.get("stream") is True
        self._count(chat_requests=1, stream_requests=int(streaming))
        self._authorize(environ)
        request = validate_chat(body)
        with self._lock:
            behaviour = self._script.popleft() if self._script else None
        if behaviour is None:
            try:
                behaviour = make_behaviour(parse_directives(request.last_user_text))
            except ValueError as exc:
                raise _invalid(f"Invalid request: {exc}") from None
        self._wait(behaviour, environ)
        echoed = echoed_key(environ["HTTP_AUTHORIZATION"].partition(" ")[2].strip(), behaviour.echo_key) \
            if behaviour.echo_key else None
        if behaviour.status is not None:
            error_type = behaviour.type or _DEFAULT_ERROR_TYPE.get(
                behaviour.status, "server_error" if behaviour.status >= 500 else "invalid_request_error")
            message = echoed or behaviour.message or _ERROR_MESSAGES.get(error_type, "Simulated error").format(
                model=request.model, retry=_seconds(behaviour.retry_after or 1))
            if behaviour.html:
                return _html_response(start_response, behaviour.status)
            headers = [("Retry-After", behaviour.retry_after_header)] if behaviour.retry_after_header else []
            return _error_response(start_response, ApiError(behaviour.status, error_type, message, behaviour.retry_after),
                                   headers)
        completion = make_completion(request, behaviour)
        if not request.stream:
            if behaviour.body:
                return self._play(_faulty_json_response(start_response, environ, completion_json(completion), behaviour),
                                  environ, stream=False)
            return _json_response(start_response, 200, completion_json(completion))
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                                  ("Msh-Request-Id", str(uuid.uuid4()))])
        events = stream_events(completion, behaviour, request.include_usage, echoed or behaviour.message)
        return self._play(events, environ)

    def _play(self, events: Iterable[tuple[float, bytes | None]], environ: dict, stream: bool = True):
        """Yields a reply's pieces one per iteration, pausing before each as planned, and counts
        how a stream ended. `events` is a list, or an endless iterator (never complete).

        A plain generator outside any reference cycle, so its `finally` runs on close() (the server
        noticed the client left) and, should a server skip close(), as soon as the server drops it.
        """
        if stream:
            self._count(streams_started=1, open_streams=1)
        last = len(events) - 1 if isinstance(events, list) else -1
        finished = False
        try:
            for i, (pause, data) in enumerate(events):
                if pause and not _pause_unless_client_left(pause, environ):
                    return
                finished = i == last  # the planned end counts as complete even if cut
                if data is None:
                    _cut_connection(environ)
                if data:  # b"" only marks a pause: written, it would end a chunked body
                    yield data
        finally:
            if stream:
                self._count(open_streams=-1, **{"streams_completed" if finished else "streams_aborted": 1})

    # -- control endpoints (no auth: tests only)

    def _control_stats(self, _environ, start_response, _body):
        """GET /_sim/stats."""
        return _json_response(start_response, 200, self.stats())

    def _control_reset(self, _environ, start_response, _body):
        """POST /_sim/reset."""
        self.reset()
        return _json_response(start_response, 200, {"ok": True})

    def _control_script(self, _environ, start_response, body):
        """POST /_sim/script with {"responses": [...]}."""
        try:
            self.script(body.get("responses") if isinstance(body, dict) else None)
        except ValueError as exc:
            raise _invalid(f"Invalid request: {exc}") from None
        return _json_response(start_response, 200, {"ok": True})


def create_simulator(api_key: str | None = None) -> Simulator:
    """A new simulator app; with api_key only that exact key is accepted."""
    return Simulator(api_key)


# ---------------------------------------------------------------- servers

class SimulatorServer:
    """A simulator running on werkzeug's threaded server in a daemon thread."""

    def __init__(self, server, thread: threading.Thread, simulator: Simulator):
        self._server, self._thread, self.simulator = server, thread, simulator
        self.host, self.port = server.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        """Stops accepting, frees hung requests and closes the listening socket."""
        self.simulator._release_waiters()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_in_thread(host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> SimulatorServer:
    """Serves a new simulator from a daemon thread; returns once the socket is listening.

    Works with or without gevent's monkey-patching (threads then become greenlets).
    """
    # Imported here so the gevent CLI never loads werkzeug.serving (and with it ssl) before patching.
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        """werkzeug's handler without the per-request access log line."""

        def log_request(self, code="-", size="-") -> None:
            """Skips the access log."""

    simulator = create_simulator(api_key)
    server = make_server(host, port, simulator, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="moonshot-simulator", daemon=True)
    thread.start()
    return SimulatorServer(server, thread, simulator)


def _raise_open_files_limit() -> None:
    """Lifts the soft open-files limit toward the hard one: 1,000 streams need over 1,024 sockets."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def main(argv=None) -> None:
    """CLI: serve the simulator with gevent.pywsgi, which holds thousands of concurrent streams."""
    import warnings

    from gevent import monkey
    # `python -m` has already imported the kimi_backend package (Flask, requests, hence ssl); this
    # process never uses ssl, so gevent's "ssl imported before patching" warning is noise here.
    warnings.filterwarnings("ignore", category=monkey.MonkeyPatchWarning)
    monkey.patch_all()
    from gevent.pywsgi import WSGIServer

    parser = argparse.ArgumentParser(description="Offline Moonshot (Kimi) API simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any sk-... key)")
    args = parser.parse_args(argv)

    class NoDelayServer(WSGIServer):
        """pywsgi writes headers and body separately; without TCP_NODELAY, Nagle's algorithm
        and the client's delayed ACK add ~40 ms to every small response."""

        def handle(self, sock, address):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    _raise_open_files_limit()
    server = NoDelayServer((args.host, args.port), create_simulator(args.api_key), log=None, backlog=2048)
    server.start()
    host, port = server.address[:2]
    print(f"simulator listening on http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
