"""Moonshot's error replies as the simulator gives them: the exception that carries one, the
default type per status and the message templates from Moonshot's error tables."""
from __future__ import annotations


class ApiError(Exception):
    """A Moonshot-style error reply: HTTP status plus {"error": {"message", "type"}}."""

    def __init__(self, status: int, type_: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


def invalid(message: str) -> ApiError:
    """400 invalid_request_error with the given message."""
    return ApiError(400, "invalid_request_error", message)


DEFAULT_ERROR_TYPE = {400: "invalid_request_error", 401: "invalid_authentication_error",
                      403: "permission_denied_error", 404: "resource_not_found_error",
                      429: "rate_limit_reached_error"}
# Message templates from Moonshot's error tables; {model} and {retry} are filled in.
ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request: simulated error",
    "invalid_authentication_error": "Invalid Authentication",
    "incorrect_api_key_error": "Incorrect API key provided",
    "permission_denied_error": "The API you are accessing is not open",
    "resource_not_found_error": "Not found the model {model} or Permission denied",
    "rate_limit_reached_error": ("Your account org-sim<ak-sim> request reached organization max RPM: 3, "
                                 "please try again after {retry} seconds"),
    "exceeded_current_quota_error": ("Your account is suspended due to insufficient balance, "
                                     "please recharge your account or check your plan and billing details"),
    "engine_overloaded_error": "The engine is currently overloaded, please try again later",
    "content_filter": "The request was rejected because it was considered high risk",
    "server_error": "Internal server error, please try again later",
    "unexpected_output": "invalid state transition",
}


def seconds(value: float) -> str:
    """Formats seconds as Moonshot and Retry-After do: "1", or "0.5" when fractional."""
    return str(int(value)) if float(value).is_integer() else str(value)
