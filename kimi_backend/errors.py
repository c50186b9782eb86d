"""The one JSON error contract: `{"success": false, "error": "...", "code": "...", "request_id": "..."}`
for every error from every layer, registered on the app."""
from __future__ import annotations

import logging
import math

from flask import Flask, Response, current_app, g, has_request_context, jsonify, request
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


# The OpenAI-compatible surface: its errors take OpenAI's shape so the official SDKs raise
# their own exception classes, which they choose by status.
OPENAI_PREFIX = "/v1/"
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error", 429: "rate_limit_error"}
# Where OpenAI answers with another status than our original contract does.
OPENAI_STATUS = {"model_not_found": 404}


def openai_surface() -> bool:
    """True while serving a request of the OpenAI-compatible surface."""
    return has_request_context() and request.path.startswith(OPENAI_PREFIX)


def error_body(code: str, message: str, status: int = 400, openai: bool | None = None,
               request_id: str | None = None) -> dict:
    """The JSON body of an error, as every layer (and the stream's in-band error) sends it:
    the original contract's shape, or OpenAI's on the `/v1` surface. `request_id` is the
    request's (from `g`) unless given: a stream's events are made after its request ended."""
    if request_id is None and has_request_context():
        request_id = g.get("request_id")
    if openai if openai is not None else openai_surface():
        error = {"message": message, "type": OPENAI_TYPES.get(status, "api_error"), "code": code}
        return {"error": error | {"request_id": request_id} if request_id else error}
    body = {"success": False, "error": message, "code": code}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A complete JSON error response."""
    if has_request_context():
        g.error_code = code  # the request's outcome, for its log line
    if openai_surface():
        status = OPENAI_STATUS.get(code, status)
    response = jsonify(error_body(code, message, status))
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
