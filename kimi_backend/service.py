"""The chat service: what the routes ask of Moonshot, in the contract's terms (the
counterpart of the original service's `services/kimiService.js`)."""
from __future__ import annotations

from typing import Callable, Iterator, TypeVar

from flask import Response, current_app, g, request

from .catalog import ModelCatalog
from .config.settings import Settings
from .errors import ApiError
from .hub_relay import direct_client
from .model_policy import DROPPED_HEADER, ModelPolicy
from .moonshot.client import MoonshotClient
from .moonshot.replies import first_answer
from .observability.access_log import Exchange, current_exchange
from .observability.metrics import label_models
from .schemas import ChatOptions
from .streaming import SHUTTING_DOWN, relay
from .usage import reserve_tokens

CALL_SHUT_DOWN = "The server is restarting, so this request was ended before the upstream answered; send it again."
T = TypeVar("T")


class KimiService:
    """Builds upstream payloads from validated requests and shapes the replies."""

    def __init__(self, settings: Settings, client: MoonshotClient):
        self.settings = settings
        self.client = client
        self.catalog = ModelCatalog(client, settings.models_cache_ttl_s, settings.allowed_models)
        self.policy = ModelPolicy(settings.default_model, settings.model_aliases, settings.allowed_models,
                                  settings.default_thinking, self.catalog.served_ids)
        label_models({self.policy.default_model, *settings.allowed_models, *settings.model_aliases.values()})

    def complete(self, messages: list[dict], options: ChatOptions,
                 client_gone: Callable[[], bool] | None = None) -> dict:
        """A whole reply: `{"message", "usage", "model", "finish_reason"[, "reasoning"]}`."""
        body = self.chat(self._payload(messages, options), client_gone)
        answer = first_answer(body)
        reply = {"message": answer.content or "", "usage": body.get("usage"),
                 "model": body["model"], "finish_reason": answer.finish_reason}
        if answer.reasoning:
            reply["reasoning"] = answer.reasoning
        return reply

    def stream(self, messages: list[dict], options: ChatOptions,
               client_gone: Callable[[], bool] | None = None) -> Iterator[bytes]:
        """Opens the upstream stream now (so refusals raise before our 200) and returns the
        generator of our SSE events."""
        return self.open_stream(self._payload(messages, options), client_gone)

    # Both surfaces: a payload fitted by `fit`, then one of these.

    def fit(self, payload: dict, thinking: bool | None) -> dict:
        """The upstream payload for a request: model resolved, what the model fixes dropped
        (named in the response header), thinking in the model's form."""
        fitted = self.policy.fit(payload, thinking)
        g.dropped_params = fitted.dropped
        current_exchange().requested(fitted.requested, fitted.served, payload["messages"])
        reserve_tokens(fitted.payload)
        return fitted.payload

    def chat(self, payload: dict, client_gone: Callable[[], bool] | None = None) -> dict:
        """One non-streamed completion: the upstream's reply, in the shape every caller reads
        (`choices[0].message` with text content; the client checks it, moonshot/replies.py),
        with `model` the model that answered. A client that leaves before the reply
        (`client_gone()`) ends the upstream request at once (499 `client_closed`), as a
        stream's does before its headers: a thinking model's reply that nobody will read can
        take minutes of tokens."""
        exchange = current_exchange()
        # A reply still awaited when the server must stop is answered in time with a 503, not
        # cut by the graceful timeout with no answer (and the worker killed before its ledger
        # rows are written).
        body = _until_given_up(exchange, "chat", client_gone, _shutting_down(), CALL_SHUT_DOWN,
                               lambda give_up: self.client.chat(payload, give_up))
        body["model"] = body.get("model") or payload["model"]
        exchange.replied(body["model"], body.get("usage"), first_answer(body).content)
        return body

    def open_stream(self, payload: dict, client_gone: Callable[[], bool] | None = None, events=None) -> Iterator[bytes]:
        """Opens a streamed completion now (so refusals raise before our 200) and returns the
        generator of its SSE events (`events` renders them; the original contract's by default).
        Usage is always asked for, so every stream can be counted."""
        payload = dict(payload, stream=True,
                       stream_options=dict(payload.get("stream_options") or {}, include_usage=True))
        exchange = current_exchange()
        # The server's stop ends a stream still waiting for the upstream's headers too, before
        # the graceful timeout would cut it with no answer at all.
        shutting_down = _shutting_down()
        upstream = _until_given_up(exchange, "chat_stream", client_gone, shutting_down, SHUTTING_DOWN,
                                   lambda give_up: self.client.open_stream(payload, give_up))
        return relay(upstream, keepalive_s=self.settings.sse_keepalive_s, client_gone=client_gone,
                     exchange=exchange.stream_handed_over(), events=events, shutting_down=shutting_down,
                     client=direct_client(request.environ))

    def models(self) -> tuple[list[dict], str]:
        """The model list and its source ("upstream" or "fallback")."""
        return self.catalog.models()

    def _payload(self, messages: list[dict], options: ChatOptions) -> dict:
        return self.fit({"model": options.model, "messages": messages, **options.upstream_options()},
                        options.thinking)


def _shutting_down() -> Callable[[], bool]:
    """The current app's check that requests must end because the server is stopping."""
    return current_app.extensions["shutdown"].streams_must_end


def _until_given_up(exchange: Exchange, kind: str, client_gone: Callable[[], bool] | None,
                    shutting_down: Callable[[], bool], stopping_message: str,
                    call: Callable[[Callable[[], bool]], T]) -> T:
    """`call(give_up)` as the exchange's upstream call `kind`, where `give_up()` is true once
    the client has left or `shutting_down()`; the client module then ends the upstream
    request (499 `client_closed`), and a server's stop is answered 503 `shutting_down` with
    `stopping_message`."""
    try:
        with exchange.upstream(kind):
            return call(_either(client_gone, shutting_down))
    except ApiError as exc:
        if exc.code == "client_closed" and shutting_down():
            raise ApiError(503, "shutting_down", stopping_message, {"Retry-After": "1"}) from None
        raise


def _either(client_gone: Callable[[], bool] | None, shutting_down: Callable[[], bool]) -> Callable[[], bool]:
    """A check that is true once the client has left or the server must end its streams."""
    if client_gone is None:
        return shutting_down
    return lambda: client_gone() or shutting_down()


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
