"""Chat requests checked the way Moonshot checks them: the served models, messages, sampling,
thinking, tools and the token budget; what the reply depends on comes out as a `ChatRequest`."""
from __future__ import annotations

from dataclasses import dataclass

from ..models import CURRENT
from .errors import ApiError, invalid, seconds

# What the upstream serves today: the model table's current models, nothing retired.
SERVED = {facts.id: facts for facts in CURRENT}
_ROLES = {"system", "user", "assistant", "tool"}
_DEFAULT_MAX_TOKENS = 1024  # what Moonshot assumes when max_tokens is omitted


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
                raise invalid(f"Invalid request: the message at position {position} has a malformed content part")
            if part["type"] == "text" and not part.get("text"):
                raise invalid("Invalid request: text content is empty")
    elif content is not None and not isinstance(content, str):
        raise invalid(f"Invalid request: the message at position {position} has content of an unsupported type")
    if not content:
        raise invalid(f"Invalid request: the message at position {position} with role '{role}' must not be empty")


def _check_unit_range(body: dict, name: str) -> None:
    """temperature and top_p: a number in [0, 1] when present."""
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        raise invalid(f"Invalid request: {name} must be a number in [0, 1]")


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
        raise invalid("Invalid request: thinking.type must be 'enabled' or 'disabled'")
    if kind == "disabled" and facts.thinking == "always":
        raise invalid(f"Invalid request: thinking cannot be disabled for model {facts.id}")
    if kind == "enabled" and facts.thinking == "none":
        raise invalid(f"Invalid request: model {facts.id} does not support thinking")
    return kind == "enabled"


def _check_fixed_sampling(body: dict, facts, thinking: bool) -> None:
    """Fixed-sampling models refuse any value but their own, in Moonshot's words."""
    fixed = dict(facts.fixed_sampling) | ({} if thinking else dict(facts.fixed_without_thinking))
    for name, value in fixed.items():
        if name in body and body[name] != value:
            shown = seconds(value)
            raise invalid(f"invalid {name}: only {shown} is allowed for this model")


def _check_tools(body: dict, messages: list, facts, thinking: bool) -> None:
    """tool_choice "required" only where the model accepts it; with thinking on, replayed
    tool-call turns must carry their reasoning."""
    if body.get("tool_choice") == "required" and not facts.tool_choice_required:
        raise invalid("Invalid request: tool_choice 'required' is incompatible with thinking enabled")
    if not thinking:
        return
    for index, message in enumerate(messages):
        if message.get("role") == "assistant" and message.get("tool_calls") and not message.get("reasoning_content"):
            raise invalid("thinking is enabled but reasoning_content is missing in assistant tool call message "
                          f"at index {index}")


def validate_chat(body) -> ChatRequest:
    """Validates a chat body like Moonshot (400 invalid_request_error, 404 unknown model)."""
    if not isinstance(body, dict):
        raise invalid("Invalid request: the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("Invalid request: model is required")
    facts = SERVED.get(model)
    if facts is None:  # unknown or retired
        raise ApiError(404, "resource_not_found_error", f"Not found the model {model} or Permission denied")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("Invalid request: messages must be a non-empty list")
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise invalid(f"Invalid request: the message at position {position} must have a role "
                          "of system, user, assistant or tool")
        _check_content(position, message)
    _check_unit_range(body, "temperature")
    _check_unit_range(body, "top_p")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 5:
        raise invalid("Invalid request: n must be an integer between 1 and 5")
    thinking = _check_thinking(body, facts)
    _check_fixed_sampling(body, facts, thinking)
    _check_tools(body, messages, facts, thinking)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = _DEFAULT_MAX_TOKENS
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid("Invalid request: max_tokens must be a positive integer")
    prompt_tokens = sum(count_tokens(text_of(m.get("content"))) + 3 for m in messages)
    if prompt_tokens + max_tokens > facts.context_length:
        raise invalid(f"Your request exceeded model token limit : {facts.context_length}")
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
