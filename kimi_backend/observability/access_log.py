"""The access line: the record of one request (who, which route, how long, which model, how
many tokens, how the upstream answered), kept on `g` while the request runs and turned into
one JSON log line (and its metrics, through metrics.py) when it ends: when the response is
complete, or for a stream when the stream ends."""
from __future__ import annotations

import logging
import time
from typing import Callable

from flask import Flask, Response, current_app, g, has_app_context, request

from ..auth import client_identity
from ..errors import UpstreamError
from . import metrics

access_log = logging.getLogger("kimi_backend.access")
log = logging.getLogger("kimi_backend")


class Exchange:
    """One request's facts; `finish()` writes its log line and metrics exactly once."""

    def __init__(self, request_id: str, method: str, path: str, log_bodies: bool):
        self.started = time.perf_counter()
        self.request_id = request_id
        self.method = method
        self.path = path
        self.log_bodies = log_bodies
        self.route = "unmatched"
        self.status = 0
        self.client = None
        self.model = None
        self.requested_model = None
        self.usage = None
        self.relayed_bytes = 0
        self._finish_callbacks: list[Callable[["Exchange"], None]] = []
        self.tokens_in = None
        self.tokens_out = None
        self.upstream_ms = None
        self.upstream_type = None
        self.outcome = None
        self.messages = None
        self.reply = None
        self.streaming = False
        self.duration_ms = None  # set by finish()

    def requested(self, requested_model: str, model: str, messages: list[dict]) -> None:
        """Notes the model the client asked for and the one asked of the upstream (and the
        messages, with LOG_BODIES)."""
        self.requested_model = requested_model
        self.model = model
        if self.log_bodies:
            self.messages = messages

    def upstream(self, endpoint: str) -> "_UpstreamCall":
        """`with exchange.upstream(endpoint):` times one upstream call and records how it ended."""
        return _UpstreamCall(self, endpoint)

    def replied(self, model: str | None, usage: dict | None, content: str | None = None) -> None:
        """Counts the tokens of a reply (and keeps its text, with LOG_BODIES)."""
        self.model = model or self.model
        if isinstance(usage, dict):
            self.usage = usage
            self.tokens_in, self.tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
            metrics.tokens_used(self.model, self.tokens_in, self.tokens_out)
        if self.log_bodies and content is not None:
            self.reply = content

    def stream_handed_over(self) -> "Exchange":
        """Marks the record as finished by the stream rather than by the response hook."""
        self.streaming = True
        return self

    def stream_started(self) -> None:
        """Called by the stream relay before its first event."""
        metrics.stream_opened()

    def stream_ended(self, usage: dict | None, outcome: str, relayed_bytes: int = 0) -> None:
        """Called by the stream relay when the stream is over, however it ended:
        `outcome` is "ok", "client_closed" or the in-band error's code; `relayed_bytes` is
        the UTF-8 size of the text (content and reasoning) relayed, which prices a stream
        cut short before its usage arrived."""
        metrics.stream_closed()
        self.relayed_bytes = relayed_bytes
        self.replied(None, usage)
        self.outcome = outcome
        if outcome not in ("ok", "client_closed"):
            metrics.upstream_failed("chat_stream", outcome)
        self.finish()

    def on_finish(self, callback: Callable[["Exchange"], None]) -> None:
        """Has `callback(exchange)` run when the request is finished (after the stream, for
        streams), e.g. to settle its token budget and record it in the usage ledger."""
        self._finish_callbacks.append(callback)

    def finish(self) -> None:
        """Writes the request's log line and its metrics, then runs the finish callbacks."""
        elapsed = time.perf_counter() - self.started
        metrics.request_answered(self.method, self.route, self.status, elapsed, self.outcome)
        self.duration_ms = round(elapsed * 1000, 1)
        fields = {
            "request_id": self.request_id, "method": self.method, "route": self.route, "path": self.path,
            "status": self.status, "duration_ms": self.duration_ms, "client": self.client,
            "model": self.model, "requested_model": self.requested_model, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "upstream_ms": self.upstream_ms, "upstream_type": self.upstream_type, "outcome": self.outcome,
        }
        if self.log_bodies:
            fields.update(messages=self.messages, reply=self.reply)
        access_log.info("request", extra={"fields": fields})
        for callback in self._finish_callbacks:
            try:
                callback(self)
            except Exception:  # the reply is out already: a failing callback must not touch it
                log.exception("request finish callback failed (request_id=%s)", self.request_id)


class _UpstreamCall:
    """Times one upstream call and records how it ended: "ok", or the `UpstreamError`'s code.
    (A class rather than a generator under `contextlib.contextmanager`: every chat call passes
    through it, and entering and leaving cost a third as much.)"""

    __slots__ = ("_exchange", "_endpoint", "_started")

    def __init__(self, exchange: Exchange, endpoint: str):
        self._exchange = exchange
        self._endpoint = endpoint

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, exc_type, exc, traceback) -> None:
        elapsed = time.perf_counter() - self._started
        exchange = self._exchange
        if exc_type is None:
            exchange.outcome = "ok"
        elif isinstance(exc, UpstreamError):
            exchange.outcome, exchange.upstream_type = exc.code, exc.upstream_type
            metrics.upstream_failed(self._endpoint, exc.upstream_type or exc.code)
        exchange.upstream_ms = round(elapsed * 1000, 1)
        metrics.upstream_called(self._endpoint, elapsed)


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any (for log records)."""
    return g.get("request_id") if has_app_context() else None


def current_exchange() -> Exchange:
    """The record of the request being served."""
    return g._get_current_object().exchange  # one Python call; `g.exchange` makes three


def begin_exchange() -> None:
    """`before_request`: opens the record (after the request id is assigned)."""
    settings = current_app.config["SETTINGS"]
    req, request_globals = request._get_current_object(), g._get_current_object()  # one lookup each
    request_globals.exchange = Exchange(request_globals.request_id, req.method, req.path, settings.log_bodies)


def end_exchange(response: Response) -> Response:
    """`after_request`: completes the record; finishes it unless a stream will."""
    request_globals = g._get_current_object()  # one context lookup, not one per use of `g`
    exchange = request_globals.get("exchange")
    if exchange is None:
        return response
    exchange.status = response.status_code
    rule = request._get_current_object().url_rule
    exchange.route = rule.rule if rule else "unmatched"
    exchange.client = client_identity()
    if exchange.outcome is None:
        # Errors raised before any upstream call: the outcome is their code.
        exchange.outcome = request_globals.get("error_code") or ("ok" if response.status_code < 400 else "error")
    if not exchange.streaming:
        exchange.finish()
    return response


def init_app(app: Flask) -> None:
    """Installs the request hooks; register after the request-id hook, before the limiter."""
    app.before_request(begin_exchange)
    app.after_request(end_exchange)
