"""The only module that talks to Moonshot: a pooled `requests` adapter, `(connect, read)`
timeouts on every call, the requests themselves, and their answers turned into Python values
or our errors. Retries are decided in retries.py, errors mapped in upstream_errors.py, bodies
read within limits in reading.py, and an open stream is handled by stream.py."""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import requests
from requests.structures import CaseInsensitiveDict

from ..errors import ApiError, UpstreamError
from . import replies
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
        # Requests go straight to the pooled adapter with a hand-built PreparedRequest: we need
        # none of Session.request's cookie jar, redirects, auth hooks or environment lookups
        # (requests otherwise reads proxy variables and netrc on every call), and skipping
        # them measured ~0.1 ms less CPU per request, about a fifth of what a call costs.
        self._adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        record_connections(self._adapter)
        self._proxies = {"http": proxy, "https": proxy} if proxy else {}
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                         "Accept": "application/json, text/event-stream", "Accept-Encoding": "identity",
                         "User-Agent": "kimi-backend"}

    def chat(self, payload: dict) -> dict:
        """A non-streaming chat completion, retried on transient failures. The first choice's
        message content is text, the usage valid or None, the model id sane or None (see replies.py)."""
        body = self.retries.run(lambda: self._request("POST", "/chat/completions", json_body=payload,
                                                     timeout=self.completion_timeout))
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
        answers and accepts our key, raises `UpstreamError` otherwise. A 404 means the upstream
        has no model list, not that it cannot serve chat."""
        try:
            self._request("GET", "/models", timeout=(min(self.timeout[0], timeout_s), timeout_s))
        except UpstreamError as exc:
            if exc.upstream_status != 404:
                raise

    def open_stream(self, payload: dict, client_gone: Callable[[], bool] | None = None) -> UpstreamStream:
        """Starts a streaming completion and checks its status before anything is sent to our
        client, so a refused request is still a proper status code. Never retried. A client
        that leaves before the upstream's headers (`client_gone()`) ends the upstream request
        at once: `ApiError` 499 `client_closed`."""
        with abandon_when(client_gone) as opening:
            try:
                response = self._send("POST", "/chat/completions", json_body=dict(payload, stream=True), stream=True)
            except UpstreamError:
                if opening is not None and opening.abandoned:
                    raise _client_left() from None
                raise
        if opening is not None and opening.abandoned:
            response.close()
            raise _client_left()
        if response.status_code != 200:
            try:
                raise map_error(response, self._reader(self.timeout[1]), self.redact)
            finally:
                response.close()
        return UpstreamStream(response, self.limits, self.timeout[1], self.redact)

    def _request(self, method: str, path: str, json_body: dict | None = None,
                 timeout: tuple[float, float] | None = None) -> Any:
        read = self._reader((timeout or self.timeout)[1])
        response = self._send(method, path, json_body=json_body, timeout=timeout)
        with response:
            if response.status_code != 200:
                raise map_error(response, read, self.redact)
            raw = read(response)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise UpstreamError(502, "upstream_malformed", "The upstream answered with a body that is not JSON.") from None
            return replies.encodable(body) if replies.may_hold_surrogates(raw) else body

    def _reader(self, total_s: float) -> Callable[[requests.Response], bytes]:
        """Reads a whole body within UPSTREAM_MAX_REPLY_BYTES and within `total_s` of now (a
        body dripping one byte at a time never trips a read timeout, which bounds gaps)."""
        deadline = time.monotonic() + total_s
        return lambda response: read_body(response, self.limits, deadline)

    def _send(self, method: str, path: str, json_body: dict | None = None, stream: bool = False,
              timeout: tuple[float, float] | None = None) -> requests.Response:
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = self.base_url + path
        prepared.headers = CaseInsensitiveDict(self._headers)
        if json_body is not None:
            prepared.body = json.dumps(json_body, ensure_ascii=False).encode()
            prepared.headers["Content-Length"] = str(len(prepared.body))
        try:
            return self._adapter.send(prepared, stream=stream, timeout=timeout or self.timeout, proxies=self._proxies)
        except requests.exceptions.ConnectTimeout:
            raise UpstreamError(503, "upstream_unavailable", "The upstream could not be reached (connect timeout).",
                                retryable=True) from None
        except requests.exceptions.ReadTimeout:
            raise UpstreamError(504, "upstream_timeout", "The upstream did not answer within the read timeout.") from None
        except requests.exceptions.ConnectionError:
            raise UpstreamError(503, "upstream_unavailable", "The upstream could not be reached (connection refused or reset).",
                                retryable=True) from None
        except requests.exceptions.RequestException:
            raise UpstreamError(502, "upstream_error", "The request to the upstream failed.") from None


def _client_left() -> ApiError:
    return ApiError(499, "client_closed", "The client closed the connection before the upstream answered.")
