"""How a Moonshot error becomes ours: a non-200 answer is mapped by Moonshot's error `type`
first and the HTTP status second onto our `UpstreamError` (status, code, message a person can
act on, Retry-After, whether a retry may help), with the upstream's own text redacted."""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from ..errors import RETRY_AFTER_MAX_S, UpstreamError
from . import replies
from .exchange import Answer

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


def error_message(body: Any, redact: Callable[[str], str]) -> str | None:
    """The upstream's error text, with the key and anything key-shaped removed: it may be
    passed on to our client, and the key must never leave the server."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return redact(replies.encodable(message)) if isinstance(message, str) else None


def _retry_after(answer: Answer, message: str | None) -> float | None:
    """Seconds to wait, from the header or from the message, clamped to RETRY_AFTER_MAX_S
    (an upstream may say `inf`, `1e400` or a 400-digit number)."""
    value = None
    header = answer.headers.get("retry-after")
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


def map_error(answer: Answer, read: Callable[[Answer], bytes], redact: Callable[[str], str]) -> UpstreamError:
    """Our error for a non-200 upstream answer, carrying the upstream's status; `read(answer)`
    reads its body."""
    error = _classify(answer, read, redact)
    error.upstream_status = answer.status
    return error


def _classify(answer: Answer, read: Callable[[Answer], bytes], redact: Callable[[str], str]) -> UpstreamError:
    """Maps a non-200 upstream answer to our error, by Moonshot's error `type` first and the
    HTTP status second. The upstream's own message is passed on only where it is about the
    request (400s, model not found); auth failures never echo anything about the key."""
    try:
        # Error bodies are not always JSON: a gateway in front of Moonshot answers its 504
        # with an HTML page, which must never reach our client.
        body = json.loads(read(answer))
    except (ValueError, RecursionError, UpstreamError):
        body = None
    status = answer.status
    error = body.get("error") if isinstance(body, dict) else None
    error_type = error.get("type") if isinstance(error, dict) else None
    if error_type is not None and error_type not in KNOWN_ERROR_TYPES:
        error_type = "other"
    message = error_message(body, redact)

    if error_type == "exceeded_current_quota_error":
        return UpstreamError(429, "upstream_quota_exceeded",
                             "The Moonshot account behind this service has no quota or balance left; "
                             "retrying will not help until its operator tops it up.",
                             retry_after=_retry_after(answer, message) or 60, upstream_type=error_type)
    if status == 429:
        retry_after = _retry_after(answer, message)
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
                             retry_after=_retry_after(answer, message), upstream_type=error_type, retryable=True)
    return UpstreamError(502, "upstream_error", f"The upstream answered with unexpected HTTP {status}.",
                         upstream_type=error_type)
