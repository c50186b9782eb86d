"""The only module that talks to Moonshot: a pooled `requests` adapter, `(connect, read)`
timeouts on every call, bounded retries for non-streaming calls, the upstream stream
reader, bounded reads of every reply, and the mapping of Moonshot's errors onto ours."""
from __future__ import annotations

import json
import math
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from ..errors import RETRY_AFTER_MAX_S, ApiError, UpstreamError
from . import replies
from .opening import abandon_when, record_connections
from .redaction import KeyRedactor
from .sse import LineTooLong, iter_data_lines

# Moonshot's texts say "please try again after 1 seconds" where no header does.
_TRY_AGAIN_AFTER = re.compile(r"try again after (\d+(?:\.\d+)?) seconds?")
_RETRYABLE_TYPES = {"rate_limit_reached_error", "engine_overloaded_error"}
_AUTH_TYPES = {"invalid_authentication_error", "incorrect_api_key_error", "permission_denied_error"}
# Error types we pass on (logs, metrics labels); any other text the upstream puts there is
# "other", so it can neither grow the metrics without bound nor carry a key into the logs.
KNOWN_ERROR_TYPES = _RETRYABLE_TYPES | _AUTH_TYPES | {
    "content_filter", "invalid_request_error", "exceeded_current_quota_error", "resource_not_found_error",
    "server_error", "unexpected_output", "insufficient_quota", "authentication_error", "not_found_error",
    "api_error", "overloaded_error"}
# After `[DONE]`, how long to wait for the body's last bytes before giving up on reusing the
# connection (an upstream that says [DONE] and then nothing must not hold it). The reader waits
# this after the client has had its last event, so it delays nobody; 0.25 s proved too short
# for a loaded machine's upstream to send its chunked terminator.
DRAIN_TIMEOUT_S = 1.0
_READ_BLOCK = 65536


@dataclass(frozen=True)
class ReplyLimits:
    """How much of a reply we read: its total size and, for streams, the longest line."""

    max_reply_bytes: int
    max_line_bytes: int


def _too_large(limits: ReplyLimits) -> str:
    return (f"The upstream's reply passed UPSTREAM_MAX_REPLY_BYTES ({limits.max_reply_bytes} bytes) "
            "and was refused.")


class StreamBroken(Exception):
    """The upstream stream failed after our 200 went out; `code` says how."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class UpstreamStream:
    """An open streaming completion whose status was 200; iterate `chunks()`, then `close()`."""

    def __init__(self, response: requests.Response, limits: ReplyLimits, progress_timeout_s: float,
                 redact: Callable[[str], str]):
        self._response = response
        self._limits = limits
        self._progress_timeout_s = progress_timeout_s
        self._redact = redact
        self._lock = threading.Lock()
        self._released = False
        self._complete = False

    def chunks(self) -> Iterator[dict]:
        """Yields each parsed chunk as it arrives, until `[DONE]`; raises `StreamBroken` on a
        malformed chunk, a broken connection, a read timeout, an end without `[DONE]`, a line
        or a reply over its limit, or a stream that sends nothing but empty chunks for longer
        than the read timeout (the timeout bounds silence, and empty chunks say nothing)."""
        raw = self._response.raw
        received = 0

        def read() -> bytes:
            nonlocal received
            block = raw.read1(_READ_BLOCK)
            received += len(block)
            if received > self._limits.max_reply_bytes:
                raise StreamBroken("upstream_reply_too_large", _too_large(self._limits))
            return block

        progress_at = time.monotonic()
        try:
            for data in iter_data_lines(read, self._limits.max_line_bytes):
                if data == b"[DONE]":
                    self._complete = True
                    return
                chunk = self._parse(data)
                if _carries_something(chunk):
                    progress_at = time.monotonic()
                elif time.monotonic() - progress_at > self._progress_timeout_s:
                    raise StreamBroken("upstream_timeout", "The upstream sent only empty chunks for longer than the read timeout.")
                yield chunk
        except LineTooLong:
            raise StreamBroken("upstream_reply_too_large", f"The upstream sent a stream line longer than "
                               f"UPSTREAM_MAX_LINE_BYTES ({self._limits.max_line_bytes} bytes).") from None
        except urllib3.exceptions.ReadTimeoutError:
            raise StreamBroken("upstream_timeout", "The upstream stopped sending for longer than the read timeout.") from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise StreamBroken("upstream_disconnected", "The upstream connection broke before the reply was complete.") from None
        raise StreamBroken("upstream_incomplete", "The upstream stream ended before it was complete.")

    def _parse(self, data: bytes) -> dict:
        try:
            chunk = json.loads(data)
            if replies.may_hold_surrogates(data):
                chunk = replies.encodable(chunk)
            if isinstance(chunk, dict) and "error" in chunk:
                raise StreamBroken("upstream_error", _error_message(chunk, self._redact)
                                   or "The upstream reported an error mid-stream.")
            return replies.chunk(chunk)
        except (ValueError, RecursionError):
            raise StreamBroken("upstream_malformed", "The upstream sent a malformed stream chunk.") from None

    def abort(self) -> None:
        """Ends the upstream request now, from any thread: shuts the socket down, which wakes
        a reader blocked on it (a plain close does not, on Linux) and tells the upstream at
        once that nobody is listening. The reader then releases the response."""
        with self._lock:
            # Once released, the connection may be back in the pool serving someone else.
            if self._released:
                return
            sock = _socket_of(self._response)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def close(self) -> None:
        """Releases the upstream connection; call it from the thread that reads the stream.
        After a complete stream, the body's last bytes are read first so the connection
        can return to the pool (an `abort()` meanwhile just ends that early)."""
        if self._complete:
            try:
                _drain(self._response)
            except (urllib3.exceptions.HTTPError, OSError):
                pass
        with self._lock:
            self._released = True
        self._response.close()


def _carries_something(chunk: dict) -> bool:
    """Whether a chunk moves the reply on: text, reasoning, a finish, usage, or tool calls."""
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        delta = choice["delta"]
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls") \
                or choice.get("finish_reason") or choice.get("usage") or delta.get("role"):
            return True
    return False


def _drain(response: requests.Response) -> None:
    """Reads the few bytes after `[DONE]` (the chunked body's end) so the connection can go
    back to the pool instead of being closed; waits for them at most DRAIN_TIMEOUT_S."""
    sock = _socket_of(response)
    if sock is not None:
        sock.settimeout(DRAIN_TIMEOUT_S)  # urllib3 sets its own timeout again when it reuses the connection
    for _ in range(4):
        if not response.raw.read1(_READ_BLOCK):
            return


def _socket_of(response: requests.Response):
    """The socket under a streaming response. http.client hands it from the connection to
    the response's file object when the upstream says `Connection: close`, so look in both."""
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock


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
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.retry_max_wait_s = retry_max_wait_s
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
        body = self._with_retries(lambda: self._request("POST", "/chat/completions", json_body=payload,
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
                if opening.abandoned:
                    raise _client_left() from None
                raise
        if opening.abandoned:
            response.close()
            raise _client_left()
        if response.status_code != 200:
            try:
                raise _map_error(response, self._reader(self.timeout[1]), self.redact)
            finally:
                response.close()
        return UpstreamStream(response, self.limits, self.timeout[1], self.redact)

    def _with_retries(self, call):
        """Runs `call` with up to `max_retries` retries on retryable failures, with exponential
        backoff and full jitter, honouring the upstream's Retry-After. The waits of one call add
        up to at most `retry_max_wait_s`: when the next wait would pass that budget, the failure
        (with its Retry-After) goes to the client instead of keeping it waiting."""
        attempt = 0
        waited = 0.0
        while True:
            try:
                return call()
            except UpstreamError as exc:
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                wait = random.uniform(0, self.retry_backoff_s * (2 ** attempt))
                if exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                if waited + wait > self.retry_max_wait_s:
                    raise
                time.sleep(wait)
                waited += wait
                attempt += 1

    def _request(self, method: str, path: str, json_body: dict | None = None,
                 timeout: tuple[float, float] | None = None) -> Any:
        read = self._reader((timeout or self.timeout)[1])
        response = self._send(method, path, json_body=json_body, timeout=timeout)
        with response:
            if response.status_code != 200:
                raise _map_error(response, read, self.redact)
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
        return lambda response: _read_body(response, self.limits, deadline)

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


def _read_body(response: requests.Response, limits: ReplyLimits, deadline: float) -> bytes:
    """The whole body of a non-streamed answer, read as it arrives. It is read after the
    headers, so a reset, truncated or stalled body fails here, and is mapped like a failure
    before the headers; so are a body over UPSTREAM_MAX_REPLY_BYTES and one still arriving at
    the deadline."""
    body = bytearray()
    try:
        while block := response.raw.read1(_READ_BLOCK):
            body += block
            if len(body) > limits.max_reply_bytes:
                raise UpstreamError(502, "upstream_reply_too_large", _too_large(limits))
            if time.monotonic() > deadline:
                raise UpstreamError(504, "upstream_timeout", "The upstream was still sending its reply at the timeout.")
    except urllib3.exceptions.ReadTimeoutError:
        raise UpstreamError(504, "upstream_timeout", "The upstream stopped sending its reply within the read timeout.") from None
    except (urllib3.exceptions.HTTPError, OSError):
        raise UpstreamError(502, "upstream_disconnected", "The upstream connection broke before the reply was complete.") from None
    return bytes(body)


def _error_message(body: Any, redact: Callable[[str], str]) -> str | None:
    """The upstream's error text, with the key and anything key-shaped removed: it may be
    passed on to our client, and the key must never leave the server."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return redact(replies.encodable(message)) if isinstance(message, str) else None


def _retry_after(response: requests.Response, message: str | None) -> float | None:
    """Seconds to wait, from the header or from the message, clamped to RETRY_AFTER_MAX_S
    (an upstream may say `inf`, `1e400` or a 400-digit number)."""
    value = None
    header = response.headers.get("Retry-After")
    if header:
        try:
            value = float(header)
        except ValueError:
            pass  # an HTTP date, or nonsense: fall back to the message
    if value is None:
        match = _TRY_AGAIN_AFTER.search(message or "")
        value = float(match.group(1)) if match else None
    if value is None or math.isnan(value):
        return None
    return min(max(0.0, value), RETRY_AFTER_MAX_S)


def _map_error(response: requests.Response, read: Callable[[requests.Response], bytes],
               redact: Callable[[str], str]) -> UpstreamError:
    """Our error for a non-200 upstream answer, carrying the upstream's status."""
    error = _classify(response, read, redact)
    error.upstream_status = response.status_code
    return error


def _classify(response: requests.Response, read: Callable[[requests.Response], bytes],
              redact: Callable[[str], str]) -> UpstreamError:
    """Maps a non-200 upstream answer to our error, by Moonshot's error `type` first and the
    HTTP status second. The upstream's own message is passed on only where it is about the
    request (400s, model not found); auth failures never echo anything about the key."""
    try:
        # Error bodies are not always JSON: a gateway in front of Moonshot answers its 504
        # with an HTML page, which must never reach our client.
        body = json.loads(read(response))
    except (ValueError, RecursionError, UpstreamError):
        body = None
    status = response.status_code
    error = body.get("error") if isinstance(body, dict) else None
    error_type = error.get("type") if isinstance(error, dict) else None
    if error_type is not None and error_type not in KNOWN_ERROR_TYPES:
        error_type = "other"
    message = _error_message(body, redact)

    if error_type == "exceeded_current_quota_error":
        return UpstreamError(429, "upstream_quota_exceeded",
                             "The Moonshot account behind this service has no quota or balance left; "
                             "retrying will not help until its operator tops it up.",
                             retry_after=_retry_after(response, message) or 60, upstream_type=error_type)
    if status == 429:
        retry_after = _retry_after(response, message)
        code = "upstream_overloaded" if error_type == "engine_overloaded_error" else "upstream_rate_limited"
        return UpstreamError(429, code, "Moonshot is rate limiting or overloaded; retry after the time in Retry-After.",
                             retry_after=retry_after if retry_after is not None else 1, upstream_type=error_type,
                             retryable=error_type in _RETRYABLE_TYPES or error_type is None)
    if status in (401, 403) or error_type in _AUTH_TYPES:
        return UpstreamError(502, "upstream_auth_failed",
                             "The upstream rejected this server's Moonshot API key; the operator must check KIMI_API_KEY.",
                             upstream_type=error_type)
    if status == 404 or error_type == "resource_not_found_error":
        return UpstreamError(400, "model_not_found",
                             f"The model is not available upstream: {message or 'not found'}.", upstream_type=error_type)
    if status == 400:
        code = "content_filter" if error_type == "content_filter" else "upstream_rejected"
        return UpstreamError(400, code, f"Moonshot rejected the request: {message or 'invalid request'}",
                             upstream_type=error_type)
    if status == 504:
        # Moonshot's gateway gave up on a long call (after 900 s): retrying would start over.
        return UpstreamError(504, "upstream_timeout", "The upstream gave up on the request (HTTP 504 gateway timeout); "
                             "streaming avoids this for long replies.", upstream_type=error_type)
    if status >= 500:
        return UpstreamError(502, "upstream_error", f"The upstream failed with HTTP {status}.",
                             retry_after=_retry_after(response, message), upstream_type=error_type, retryable=True)
    return UpstreamError(502, "upstream_error", f"The upstream answered with unexpected HTTP {status}.",
                         upstream_type=error_type)
