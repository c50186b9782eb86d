"""The chat service: what the routes ask of Moonshot, in the contract's terms (the
counterpart of the original service's `services/kimiService.js`)."""
from __future__ import annotations

from typing import Callable, Iterator

from flask import Response, current_app, g

from .catalog import ModelCatalog
from .config import Settings
from .metrics import label_models
from .model_policy import DROPPED_HEADER, ModelPolicy
from .moonshot.client import MoonshotClient
from .schemas import ChatOptions
from .streaming import relay
from .telemetry import current_exchange


class KimiService:
    """Builds upstream payloads from validated requests and shapes the replies."""

    def __init__(self, settings: Settings, client: MoonshotClient):
        self.settings = settings
        self.client = client
        self.catalog = ModelCatalog(client, settings.models_cache_ttl_s, settings.allowed_models)
        self.policy = ModelPolicy(settings.default_model, settings.model_aliases, settings.allowed_models,
                                  settings.default_thinking, self.catalog.served_ids)
        label_models({self.policy.default_model, *settings.allowed_models, *settings.model_aliases.values()})

    def complete(self, messages: list[dict], options: ChatOptions) -> dict:
        """A whole reply: `{"message", "usage", "model", "finish_reason"}`."""
        payload = self._payload(messages, options)
        exchange = current_exchange()
        with exchange.upstream("chat"):
            body = self.client.chat(payload)
        choice = body["choices"][0]  # the client checked the shape (moonshot/replies.py)
        content = choice["message"].get("content") or ""
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
        fitted = self.policy.fit({"model": options.model, "messages": messages, **options.upstream_options()},
                                 options.thinking)
        g.dropped_params = fitted.dropped
        current_exchange().requested(fitted.requested, fitted.served, messages)
        return fitted.payload


def dropped_params_header(response: Response) -> Response:
    """`after_request` for chat routes: names the sampling parameters dropped because the
    model fixes them, so a developer sees why their value had no effect."""
    dropped = g.get("dropped_params")
    if dropped:
        response.headers[DROPPED_HEADER] = ", ".join(dropped)
    return response


def get_service() -> KimiService:
    """The current app's chat service."""
    return current_app.extensions["kimi_service"]
