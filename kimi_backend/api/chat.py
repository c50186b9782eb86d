"""`/api/chat/*`: the original service's chat routes (single turn, history, stream, models)."""
from __future__ import annotations

from typing import Iterator

from flask import Blueprint, jsonify, request

from ..auth import require_client_key
from ..extensions import limiter
from ..origins import protect
from ..responses import KimiResponse
from ..schemas import CompletionRequest, HistoryRequest, StreamRequest, validated
from ..service import dropped_params_header, get_service
from ..streaming import client_gone_probe
from .openapi import listed, produces

bp = Blueprint("chat", __name__, url_prefix="/api/chat")
protect(bp)
bp.before_request(require_client_key)
bp.after_request(dropped_params_header)
limiter.limit_api(bp)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(events: Iterator[bytes]) -> KimiResponse:
    """The streamed response for a relay's events. They are bytes already, so the server
    iterates the relay itself, without werkzeug's encoding and closing wrappers around each
    write (closing the relay is all that closing the response would do)."""
    return KimiResponse(events, mimetype="text/event-stream", headers=SSE_HEADERS, direct_passthrough=True)


@bp.post("/completion")
@listed("Single-turn chat: {message, model?, system?}")
@validated(CompletionRequest)
def completion(body: CompletionRequest):
    """One user message (and an optional system prompt) in, one reply out."""
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.message})
    return jsonify(success=True, data=get_service().complete(messages, body, client_gone_probe(request.environ)))


@bp.post("/history")
@listed("Multi-turn chat: {messages: [{role, content}], model?}")
@validated(HistoryRequest)
def history(body: HistoryRequest):
    """A whole conversation in, the next reply out."""
    messages = [message.upstream() for message in body.messages]
    return jsonify(success=True, data=get_service().complete(messages, body, client_gone_probe(request.environ)))


@bp.post("/stream")
@listed("Streamed chat (server-sent events): {messages: text | [...], model?}")
@validated(StreamRequest)
@produces("text/event-stream")
def stream(body: StreamRequest):
    """The reply as server-sent events, each flushed as the upstream sends it."""
    if isinstance(body.messages, str):
        messages = [{"role": "user", "content": body.messages}]
    else:
        messages = [message.upstream() for message in body.messages]
    events = get_service().stream(messages, body, client_gone=client_gone_probe(request.environ))
    return sse_response(events)


@bp.get("/models")
@listed("Available models")
def models():
    """The models this service can use."""
    data, source = get_service().models()
    return jsonify(success=True, data=data, source=source)
