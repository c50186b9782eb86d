"""Client keys (`x-api-key` or `Authorization: Bearer`) and the client identity used for
rate limits and logs."""
from __future__ import annotations

import hashlib
import hmac

from flask import current_app, g, request

from .errors import ApiError


def bearer_token() -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def presented_key() -> str | None:
    """The client key from `x-api-key` or `Authorization: Bearer`, if any."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    return bearer_token()


def _is_valid(key: str, valid_keys: tuple[str, ...]) -> bool:
    # Compare against every key, without stopping early, so timing says nothing about which matched.
    candidate = key.encode()
    matched = False
    for valid in valid_keys:
        matched |= hmac.compare_digest(candidate, valid.encode())
    return matched


def key_fingerprint(key: str) -> str:
    """A short, stable hash of a client key, safe to log and to use as a limiter key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def require_client_key() -> None:
    """`before_request` for the chat routes: with REQUIRE_API_KEY on, a valid key or 401."""
    settings = current_app.config["SETTINGS"]
    if not settings.require_api_key or request.method == "OPTIONS":
        return
    key = presented_key()
    if key is None:
        raise ApiError(401, "missing_api_key", "An API key is required: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'.",
                       {"WWW-Authenticate": 'Bearer realm="kimi-backend"'})
    if not _is_valid(key, settings.valid_api_keys):
        raise ApiError(401, "invalid_api_key", "The API key is not valid.",
                       {"WWW-Authenticate": 'Bearer realm="kimi-backend", error="invalid_token"'})


def client_identity() -> str:
    """Who the limiter counts: a presented key when it is valid, otherwise the client IP
    (after ProxyFix, when TRUSTED_PROXY_COUNT trusts the proxies in front). The limiter runs
    before `require_client_key`, so the key is checked here too. Worked out once per request
    (the limiter and the access log both ask)."""
    identity = g.get("client_identity")
    if identity is None:
        key = presented_key()
        if key and _is_valid(key, current_app.config["SETTINGS"].valid_api_keys):
            identity = f"key:{key_fingerprint(key)}"
        else:
            identity = f"ip:{request.remote_addr or 'unknown'}"
        g.client_identity = identity
    return identity
