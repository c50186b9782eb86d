"""What the simulator answers: the model list, and one generated chat reply (`Completion`)
with its non-stream JSON; odd-but-valid variants and key-echoing error messages for the fault
directives."""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..models import CURRENT, model_item
from .directives import Behaviour, strip_directives
from .validation import ChatRequest, count_tokens

OFFLINE_NOTICE = "[offline simulator]"

# The `/v1/models` list: the model table's current models, nothing retired.
MODELS = [model_item(facts) for facts in CURRENT]


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
