"""Request schemas: the single source for validating request bodies (and for the OpenAPI
document). Validation errors become one 400 whose message names the field."""
from __future__ import annotations

import functools
from typing import Annotated, Callable, Literal, TypeVar

from flask import request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import ApiError


def _whole(value):
    # JSON has one number type: 1024.0 is the integer 1024 to JSON Schema (and to the API
    # document), so it is accepted as one; 1.5 and "1024" still are not.
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53 else value


def whole(minimum: int, maximum: int):
    """A whole number in [minimum, maximum], written as JSON may write it (bounds first, so
    the API document states them)."""
    return Annotated[int, Field(ge=minimum, le=maximum), BeforeValidator(_whole)]


TokenBudget = whole(1, 1_048_576)


class ChatOptions(BaseModel):
    """Options every chat request may carry, within Moonshot's ranges."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = Field(default=None, min_length=1, max_length=128,
                              description="Model id; the server's DEFAULT_MODEL when omitted.")
    temperature: float | None = Field(default=None, ge=0, le=1, description="Sampling temperature, 0 to 1 (Moonshot's range).")
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling, 0 to 1.")
    max_tokens: TokenBudget | None = Field(default=None, description="Output token budget.")
    max_completion_tokens: TokenBudget | None = Field(default=None,
                                              description="Output token budget (the newer name; either is accepted).")
    thinking: bool | None = Field(default=None, description=(
        "Whether the model reasons before answering; the server's DEFAULT_THINKING when omitted. "
        "Refused for models that always think when false."))

    def upstream_options(self) -> dict:
        """The options that go into the upstream payload as they are (the model is fitted apart)."""
        return {name: value for name in ("temperature", "top_p", "max_tokens", "max_completion_tokens")
                if (value := getattr(self, name)) is not None}


# The most messages one request may carry, streamed or not.
MAX_MESSAGES = 1000
# Text with at least one character that is not whitespace (also in the API document, so
# generated clients and test tools know that "" and "   " are refused).
NOT_BLANK = r"\S"


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, pattern=NOT_BLANK)
    reasoning: str | None = Field(default=None, description=(
        "An assistant turn's reasoning, from the reply that produced it: sent back to Moonshot as "
        "reasoning_content, which thinking models need in multi-turn calls."))
    reasoning_content: str | None = Field(default=None, description="The same as 'reasoning' (Moonshot's name).")

    def upstream(self) -> dict:
        """The message in Moonshot's form."""
        message = {"role": self.role, "content": self.content}
        reasoning = self.reasoning or self.reasoning_content
        if reasoning and self.role == "assistant":
            message["reasoning_content"] = reasoning
        return message


class CompletionRequest(ChatOptions):
    """`POST /api/chat/completion`: one user message, optionally a system prompt."""

    message: str = Field(min_length=1, pattern=NOT_BLANK, description="The user's message.")
    system: str | None = Field(default=None, min_length=1, description="An optional system prompt.")


class HistoryRequest(ChatOptions):
    """`POST /api/chat/history`: a whole conversation, oldest first."""

    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)


class StreamRequest(ChatOptions):
    """`POST /api/chat/stream`: one user message as text, or a conversation."""

    messages: Annotated[str, Field(min_length=1, pattern=NOT_BLANK)] | \
        Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)] = Field(
            description="A user message as text, or a list of messages.")


class Thinking(BaseModel):
    """Moonshot's own form of the thinking switch (`{"type": "disabled"}`), as OpenAI SDKs send it
    through `extra_body`; other keys (k2.6's `keep`) pass through."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["enabled", "disabled"]


class OpenAIMessage(BaseModel):
    """One message in OpenAI's format; every field passes through (`tool_calls`,
    `tool_call_id`, `name`, `partial`, `reasoning_content`, content parts)."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict] | None = None


class OpenAIChatRequest(BaseModel):
    """`POST /v1/chat/completions`: OpenAI's chat request. Known fields are checked against
    Moonshot's ranges; everything else passes through to Moonshot unchanged."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = Field(default=None, min_length=1, max_length=128,
                              description="Model id; the server's DEFAULT_MODEL when omitted.")
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1, description="0 to 1 (Moonshot's range).")
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: whole(1, 5) | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, description="-2 to 2.")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, description="-2 to 2.")
    max_tokens: TokenBudget | None = None
    max_completion_tokens: TokenBudget | None = None
    thinking: bool | Thinking | None = Field(default=None, description=(
        "true/false, or Moonshot's {\"type\": \"enabled\"|\"disabled\"}; the server's DEFAULT_THINKING when omitted."))


Schema = TypeVar("Schema", bound=BaseModel)


def parse(schema: type[Schema], body: bytes) -> Schema:
    """Validates a raw JSON body against `schema`, or raises a 400 `ApiError` naming the field."""
    try:
        return schema.model_validate_json(body or b"")
    except ValidationError as exc:
        raise _as_api_error(exc) from None


def validated(schema: type[BaseModel]) -> Callable:
    """Decorates a view so it receives its JSON body validated against `schema` as `body`.
    The schema stays on the view (`request_schema`), where the OpenAPI document reads it."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            return view(*args, body=parse(schema, request.get_data()), **kwargs)
        wrapper.request_schema = schema
        return wrapper
    return decorate


def _as_api_error(exc: ValidationError) -> ApiError:
    # With a union (`messages`: text or list) the longest location is the most specific error,
    # and of the branches, the one whose type the input has (not "should be a valid string").
    first = max(exc.errors(include_url=False),
                key=lambda error: (len(error["loc"]), not error["type"].endswith("_type")))
    kind = first["type"]
    if kind == "json_invalid":
        return ApiError(400, "invalid_json", "The request body is not valid JSON (send Content-Type: application/json).")
    if not first["loc"]:
        return ApiError(400, "invalid_body", "The request body must be a JSON object.")
    field = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("str", "list[", "constrained-")))
    if kind == "missing":
        return ApiError(400, "invalid_request", f"Field '{field}' is required.")
    if kind == "string_pattern_mismatch" and first["ctx"]["pattern"] == NOT_BLANK:
        return ApiError(400, "invalid_request", f"Field '{field}' is invalid: must not be empty or only whitespace.")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, "invalid_request", f"Field '{field}' is invalid: {message}.")
