"""`/v1/*`: the OpenAI-compatible surface, so the official OpenAI SDKs (and LobeChat, Open WebUI,
LangChain, ...) work by changing only their base URL. Bodies pass through in the OpenAI/Moonshot
format; the key, limits, model policy and CORS are the same as on `/api/chat/*`, and errors take
OpenAI's shape (see `errors.error_body`)."""
from __future__ import annotations

import orjson
from flask import Blueprint, jsonify, request

from ..auth import require_client_key
from ..errors import error_body
from ..extensions import limiter
from ..origins import protect
from ..moonshot.replies import TextDelta
from ..moonshot.sse import DONE, event
from ..schemas import OpenAIChatRequest, validated
from ..service import dropped_params_header, get_service
from ..streaming import client_gone_probe
from .chat import sse_response
from .openapi import listed

# A text no upstream sends, put where a shape's text goes to find that place in its rendering.
_MARK = "\u0000kimi-backend text\u0000"
_MARK_JSON = orjson.dumps(_MARK)

bp = Blueprint("openai", __name__, url_prefix="/v1")
protect(bp)
bp.before_request(require_client_key)
bp.after_request(dropped_params_header)
limiter.limit_api(bp)


class OpenAIEvents:
    """Stream events in OpenAI's format: each upstream chunk relayed as it is, then `[DONE]`.
    The usage-only chunk (`choices: []`) goes out only to clients that asked for it with
    `stream_options.include_usage`, as OpenAI does; Moonshot's usage inside the last choice
    always does."""

    def __init__(self, include_usage: bool):
        self.include_usage = include_usage

    def chunk(self, chunk: dict) -> bytes:
        """The chunk itself."""
        return event(chunk) if chunk.get("choices") or self.include_usage else b""

    def text(self, delta: TextDelta) -> bytes:
        """The event for a text-only chunk read as its text (`UpstreamStream.read_text_deltas`):
        the bytes `chunk` makes of that chunk, with only the text encoded (the rest of the
        rendering is made once per shape)."""
        shape = delta.shape
        if shape.rendered is None:
            rendered = event(shape.with_text(_MARK)).split(_MARK_JSON)
            if len(rendered) != 2:  # the mark elsewhere too (it cannot be, but never guess)
                return event(shape.with_text(delta.text))
            shape.rendered = (rendered[0], rendered[1])
        before, after = shape.rendered
        return before + orjson.dumps(delta.text) + after

    def end(self, finish_reason: str | None, usage: dict | None) -> bytes:
        """`[DONE]`."""
        return DONE

    def error(self, code: str, message: str, request_id: str) -> bytes:
        """An in-band error in OpenAI's shape (the SDKs raise it from the stream), then `[DONE]`."""
        return event(error_body(code, message, 502, openai=True, request_id=request_id)) + DONE


@bp.post("/chat/completions")
@listed("OpenAI-compatible chat completion (streamed or not)")
@validated(OpenAIChatRequest)
def chat_completions(body: OpenAIChatRequest):
    """OpenAI's chat completion, streamed (`stream: true`, server-sent events) or not."""
    payload = body.model_dump(exclude_unset=True)
    thinking = payload.pop("thinking", None)
    for message in payload["messages"]:
        if message["role"] == "developer":  # OpenAI's newer name for the system role
            message["role"] = "system"
    service = get_service()
    fitted = service.fit(payload, thinking if isinstance(thinking, bool) or thinking is None
                         else thinking["type"] == "enabled")
    if isinstance(thinking, dict) and "thinking" in fitted:
        # Moonshot's own form was sent: keep its other keys wherever the model takes the switch
        # (a model that always thinks is sent none, as on /api/chat).
        fitted["thinking"] = thinking | fitted["thinking"]
    if not body.stream:
        return jsonify(service.chat(fitted, client_gone_probe(request.environ)))
    options = payload.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    events = service.open_stream(fitted, client_gone_probe(request.environ), OpenAIEvents(include_usage))
    return sse_response(events)


@bp.get("/models")
@listed("OpenAI-compatible model list")
def models():
    """The models this service can use, as OpenAI's model list."""
    data, _ = get_service().models()
    return jsonify(object="list", data=data)
