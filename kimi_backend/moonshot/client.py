"""The only module that talks to Moonshot: connection pools set up by `requests`' adapter,
`(connect, read)` timeouts on every call, the requests themselves, and their answers turned
into Python values or our errors. Each request is one exchange on a pooled connection
(exchange.py); retries are decided in retries.py, errors mapped in upstream_errors.py, bodies
read within limits in reading.py, and an open stream is handled by stream.py."""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import requests
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import (ClosedPoolError, ConnectTimeoutError, HTTPError, MaxRetryError, NewConnectionError,
                                ProtocolError, ProxyError, ReadTimeoutError, ResponseError, SSLError)

from ..errors import ApiError, UpstreamError
from . import replies
from .exchange import Answer, Target, exchange
from .opening import abandon_when, record_connections
from .reading import ReplyLimits, read_body
from .redaction import KeyRedactor
from .retries import RetryPolicy
from .stream import UpstreamStream
from .upstream_errors import map_error


class MoonshotClient:
    """Calls Moonshot's REST API; returns Python values or raises `UpstreamError`."""

    def __init__(self, base_url: str, api_key: str, *, connect_timeout_s: float, read_timeout_s: float,
                 completion_timeout_s: float, max_retries: int, retry_backoff_s: float, retry_max_wait_s: float,
                 pool_size: int, limits: ReplyLimits, proxy: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.limits = limits
        self.redact = KeyRedactor(api_key)
        self.timeout = (connect_timeout_s, read_timeout_s)
        # A non-streamed completion sends nothing until it is done, which takes minutes on
        # thinking models: its read timeout is the whole call's.
        self.completion_timeout = (connect_timeout_s, max(read_timeout_s, completion_timeout_s))
        self.retries = RetryPolicy(max_retries, retry_backoff_s, retry_max_wait_s)
        # `requests` sets the connection pool up (TLS verification, the proxy, our pool classes);
        # the requests themselves are exchanged on that pool's connections (see `_send`).
        self._adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        record_connections(self._adapter)
        self._proxies = {"http": proxy, "https": proxy} if proxy else {}
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                         "Accept": "application/json, text/event-stream", "Accept-Encoding": "identity",
                         "User-Agent": "kimi-backend"}
        self._targets: dict[tuple[str, str], Target] = {}

    def chat(self, payload: dict, give_up: Callable[[], bool] | None = None) -> dict:
        """A non-streaming chat completion, retried on transient failures. The first choice's
        message content is text, the usage valid or None, the model id sane or None (see replies.py).
        Once `give_up()` says so (the client left, or the server is stopping), a call still
        waiting for the upstream is ended at once (not retried): `ApiError` 499
        `client_closed`, as for a stream being opened."""
        def call() -> Any:
            with abandon_when(give_up) as opening:
                try:
                    return self._request("POST", "/chat/completions", json_body=payload,
                                         timeout=self.completion_timeout)
                except UpstreamError:
                    if opening is not None and opening.abandoned:
                        raise _client_left() from None
                    raise
        body = self.retries.run(call)
        try:
            return replies.completion(body)
        except replies.UnusableReply:
            raise UpstreamError(502, "upstream_malformed", "The upstream's reply was not in the expected shape.") from None

    def list_models(self, timeout_s: float) -> list[dict]:
        """The models the upstream account can use; empty when the upstream has no `/models`
        route (a 404: many OpenAI-compatible servers serve chat without one). Not retried:
        the catalog falls back to the model table meanwhile."""
        try:
            body = self._request("GET", "/models", timeout=(min(self.timeout[0], timeout_s), timeout_s))
        except UpstreamError as exc:
            if exc.upstream_status == 404:
                return []
            raise
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(502, "upstream_error", "The upstream's model list was not in the expected shape.")
        return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]

    def probe(self, timeout_s: float) -> None:
        """One quick `GET /models`, never retried, for readiness: returns when the upstream
        answers and accepts our key; raises `UpstreamError` when it cannot be reached, times
        out, fails (5xx, a broken body) or refuses our key. Any other answer means it is up: a
        404 is an upstream with no model list, a 429 a busy one, another 4xx a route it lacks."""
        try:
            self._request("GET", "/models", timeout=(min(self.timeout[0], timeout_s), timeout_s))
        except UpstreamError as exc:
            status = exc.upstream_status
            if status is None or status >= 500 or exc.code == "upstream_auth_failed":
                raise

    def open_stream(self, payload: dict, client_gone: Callable[[], bool] | None = None) -> UpstreamStream:
        """Starts a streaming completion and checks its status before anything is sent to our
        client, so a refused request is still a proper status code. Never retried. A client
        that leaves before the upstream's headers (`client_gone()`) ends the upstream request
        at once: `ApiError` 499 `client_closed`."""
        with abandon_when(client_gone) as opening:
            try:
                answer = self._send("POST", "/chat/completions", json_body=dict(payload, stream=True))
            except UpstreamError:
                if opening is not None and opening.abandoned:
                    raise _client_left() from None
                raise
        if opening is not None and opening.abandoned:
            answer.release()
            raise _client_left()
        if answer.status != 200:
            try:
                raise map_error(answer, self._reader(time.monotonic() + self.timeout[1]), self.redact)
            finally:
                answer.release()
        return UpstreamStream(answer, self.limits, self.timeout[1], self.redact)

    def _request(self, method: str, path: str, json_body: dict | None = None,
                 timeout: tuple[float, float] | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)[1]
        answer = self._send(method, path, json_body=json_body, timeout=timeout)
        try:
            if answer.status != 200:
                raise map_error(answer, self._reader(deadline), self.redact)
            raw = read_body(answer, self.limits, deadline)
        finally:
            answer.release()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise UpstreamError(502, "upstream_malformed", "The upstream answered with a body that is not JSON.") from None
        return replies.encodable(body) if replies.may_hold_surrogates(raw) else body

    def _reader(self, deadline: float) -> Callable[[Answer], bytes]:
        """Reads a whole body within UPSTREAM_MAX_REPLY_BYTES and by `deadline` (a body
        dripping one byte at a time never trips a read timeout, which bounds gaps)."""
        return lambda answer: read_body(answer, self.limits, deadline)

    def _send(self, method: str, path: str, json_body: dict | None = None,
              timeout: tuple[float, float] | None = None) -> Answer:
        """Sends one request on a pooled connection, returning once the status and headers are
        in (the body is left to read). Its failures are mapped as `requests` maps them (see
        `_failure`)."""
        body = None if json_body is None else json.dumps(json_body, ensure_ascii=False).encode()
        connect_s, read_s = timeout or self.timeout
        try:
            return exchange(self._target(method, path), body, connect_s, read_s)
        except (HTTPError, OSError) as exc:  # urllib3's errors all derive from HTTPError
            raise _failure(exc) from None

    def _target(self, method: str, path: str) -> Target:
        """The pool and the request line and headers for `method` and `path`, as
        `HTTPAdapter.send` would find the pool and the URL (through the proxy when there is
        one); worked out once, since none of it ever changes."""
        target = self._targets.get((method, path))
        if target is None:
            request = requests.PreparedRequest()
            request.method = method
            request.url = self.base_url + path
            request.headers = CaseInsensitiveDict(self._headers)
            pool = self._adapter.get_connection_with_tls_context(request, True, proxies=self._proxies)
            self._adapter.cert_verify(pool, request.url, True, None)
            url = self._adapter.request_url(request, self._proxies)
            target = self._targets[(method, path)] = Target(pool, method, url, self.base_url, self._headers)
        return target


def _failure(exc: Exception) -> UpstreamError:
    """Our error for a failed send, by what `requests` would have raised for it: a connect
    timeout, a read timeout, a connection that failed (refused, reset, TLS, the proxy), or
    anything else."""
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
        return UpstreamError(503, "upstream_unavailable", "The upstream could not be reached (connect timeout).",
                             retryable=True)
    if isinstance(exc, ReadTimeoutError):
        return UpstreamError(504, "upstream_timeout", "The upstream did not answer within the read timeout.")
    if isinstance(exc, (ProtocolError, OSError, MaxRetryError, ClosedPoolError, ProxyError, SSLError,
                        NewConnectionError)) and not isinstance(reason, ResponseError):
        return UpstreamError(503, "upstream_unavailable", "The upstream could not be reached (connection refused or reset).",
                             retryable=True)
    return UpstreamError(502, "upstream_error", "The request to the upstream failed.")


def _client_left() -> ApiError:
    return ApiError(499, "client_closed", "The client closed the connection before the upstream answered.")
