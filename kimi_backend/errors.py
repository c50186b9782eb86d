"""The one JSON error contract: `{"success": false, "error": "...", "code": "...", "request_id": "..."}`
for every error from every layer, registered on the app."""
from __future__ import annotations

import logging
import math

from flask import Flask, Response, current_app, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("kimi_backend")

# Machine codes for the errors Flask, Werkzeug and flask-limiter raise themselves.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
# The longest Retry-After we pass on: an upstream asking for longer (or for `inf`) is clamped.
RETRY_AFTER_MAX_S = 3600.0
HTTP_MESSAGES = {
    404: "No such endpoint. GET /api/info lists the endpoints this service offers.",
    405: "This endpoint does not accept that HTTP method.",
    429: "Too many requests: the rate limit for this client is used up. Retry after the time in the Retry-After header.",
}


class ApiError(Exception):
    """An error with a status, a machine code and a message a person can act on."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class UpstreamError(ApiError):
    """Moonshot refused, failed or could not be reached; mapped to our status and code."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None,
                 upstream_type: str | None = None, retryable: bool = False):
        if retry_after is not None:
            retry_after = min(max(0.0, retry_after), RETRY_AFTER_MAX_S) if math.isfinite(retry_after) else RETRY_AFTER_MAX_S
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {}
        super().__init__(status, code, message, headers)
        self.retry_after = retry_after
        self.upstream_type = upstream_type
        self.retryable = retryable
        self.upstream_status: int | None = None  # the upstream's HTTP status, when it answered


def error_body(code: str, message: str) -> dict:
    """The JSON body of an error, as every layer (and the stream's in-band error) sends it."""
    body = {"success": False, "error": message, "code": code}
    request_id = g.get("request_id") if g else None
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A complete JSON error response."""
    response = jsonify(error_body(code, message))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def handle_api_error(exc: ApiError) -> Response:
    """Our own errors: status, code and message as raised."""
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def handle_http_exception(exc: HTTPException) -> Response:
    """Flask's and extensions' errors: keep their status and headers (Allow, Retry-After),
    replace the HTML body with our JSON."""
    response = exc.get_response()
    status = exc.code or 500
    message = HTTP_MESSAGES.get(status) or exc.description or exc.name
    if status == 413:
        message = f"Request body too large: the limit is {current_app.config['MAX_CONTENT_LENGTH']} bytes."
    body = error_response(status, HTTP_CODES.get(status, "http_error"), message)
    for name, value in response.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            body.headers[name] = value
    return body


def handle_unexpected(exc: Exception) -> Response:
    """A bug: log it with the request id, answer with a generic message and no detail."""
    log.exception("unhandled error (request_id=%s)", g.get("request_id"))
    return error_response(500, "internal_error", "Internal server error. Quote the request_id when reporting it.")


def register_error_handlers(app: Flask) -> None:
    """Installs the JSON error contract for every layer, including Flask's own 404/405."""
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
