"""The chat service: what the routes ask of Moonshot, in the contract's terms (the
counterpart of the original service's `services/kimiService.js`)."""
from __future__ import annotations

from typing import Callable, Iterator

from flask import current_app

from .catalog import ModelCatalog
from .config import Settings
from .errors import ApiError, UpstreamError
from .moonshot.client import MoonshotClient
from .schemas import ChatOptions
from .streaming import relay
from .telemetry import current_exchange
from .usage import reserve_tokens


class KimiService:
    """Builds upstream payloads from validated requests and shapes the replies."""

    def __init__(self, settings: Settings, client: MoonshotClient):
        self.settings = settings
        self.client = client
        self.catalog = ModelCatalog(client, settings.models_cache_ttl_s, settings.allowed_models)

    def complete(self, messages: list[dict], options: ChatOptions) -> dict:
        """A whole reply: `{"message", "usage", "model", "finish_reason"}`."""
        payload = self._payload(messages, options)
        exchange = current_exchange()
        with exchange.upstream("chat"):
            body = self.client.chat(payload)
        try:
            choice = body["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise UpstreamError(502, "upstream_error", "The upstream's reply was not in the expected shape.") from None
        reply = {"message": content, "usage": body.get("usage"), "model": body.get("model") or payload["model"],
                 "finish_reason": choice.get("finish_reason")}
        if choice["message"].get("reasoning_content"):
            reply["reasoning"] = choice["message"]["reasoning_content"]
        exchange.replied(reply["model"], reply["usage"], content)
        return reply

    def stream(self, messages: list[dict], options: ChatOptions,
               client_gone: Callable[[], bool] | None = None) -> Iterator[bytes]:
        """Opens the upstream stream now (so refusals raise before our 200) and returns the
        generator of our SSE events."""
        payload = self._payload(messages, options)
        payload["stream_options"] = {"include_usage": True}
        exchange = current_exchange()
        with exchange.upstream("chat_stream"):
            upstream = self.client.open_stream(payload)
        return relay(upstream, keepalive_s=self.settings.sse_keepalive_s, client_gone=client_gone,
                     exchange=exchange.stream_handed_over())

    def models(self) -> tuple[list[dict], str]:
        """The model list and its source ("upstream" or "fallback")."""
        return self.catalog.models()

    def _payload(self, messages: list[dict], options: ChatOptions) -> dict:
        model = options.model or self.settings.default_model
        allowed = self.settings.allowed_models
        if allowed and model not in allowed:
            raise ApiError(400, "model_not_allowed", f"Model '{model}' is not allowed here; use one of: {', '.join(allowed)}.")
        payload = {"model": model, "messages": messages}
        current_exchange().requested(model, messages)
        for name in ("temperature", "top_p", "max_tokens"):
            value = getattr(options, name)
            if value is not None:
                payload[name] = value
        reserve_tokens(payload)
        return payload


def get_service() -> KimiService:
    """The current app's chat service."""
    return current_app.extensions["kimi_service"]
