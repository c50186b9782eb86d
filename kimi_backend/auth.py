"""Client credentials (`x-api-key` or `Authorization: Bearer`): static client keys and browser
tokens (tokens.py), and the client identity used for rate limits, budgets and logs."""
from __future__ import annotations

import hashlib
import hmac

from flask import current_app, g, request

from .errors import ApiError
from .tokens import TokenClaims, get_tokens


def bearer_token(headers=None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (of `headers`, by default this
    request's), if any."""
    if headers is None:
        headers = request._get_current_object().headers
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def presented_key() -> str | None:
    """The client key from `x-api-key` or `Authorization: Bearer`, if any."""
    headers = request._get_current_object().headers  # one context lookup for both headers
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    return bearer_token(headers)


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


def request_origin() -> str | None:
    """The origin of the page that sent the request: its `Origin` header or, for a same-origin
    GET (which browsers send without one), this service's own origin when `Sec-Fetch-Site`
    says so. None when neither says (a script, not a browser page)."""
    origin = request.headers.get("Origin")
    if origin:
        return origin
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return f"{request.scheme}://{request.host}"
    return None


_UNCHECKED = object()


def _checked_token() -> TokenClaims | ApiError | None:
    # Once per request (the limiter, the key check and the access log all ask): the presented
    # token's claims, the error it earns, or None when no token is presented.
    request_globals = g._get_current_object()  # one context lookup, not one per use of `g`
    outcome = request_globals.get("token_outcome", _UNCHECKED)
    if outcome is _UNCHECKED:
        outcome = request_globals.token_outcome = _check_presented_token()
    return outcome


def _check_presented_token() -> TokenClaims | ApiError | None:
    tokens = get_tokens()
    if tokens is None:
        return None
    credential = presented_key()
    # A JWT is three dot-separated parts; anything else is a static key (or nothing).
    if not credential or credential.count(".") != 2 or _is_valid(credential, current_app.config["SETTINGS"].valid_api_keys):
        return None
    try:
        claims = tokens.verify(credential, request_origin())
    except ApiError as exc:
        return exc
    g.token = claims
    if claims.token_budget is not None:
        g.token_budget = claims.token_budget
    return claims


def verified_token() -> TokenClaims | None:
    """The claims of the browser token this request presents, when its signature, expiry and
    origin check out (revocation is checked by `require_client_key`); otherwise None."""
    outcome = _checked_token()
    return outcome if isinstance(outcome, TokenClaims) else None


def require_client_key() -> None:
    """`before_request` for the chat routes: a presented browser token must be valid (whether
    or not keys are required: its origins and limits bind its holder); otherwise, with
    REQUIRE_API_KEY on, a valid client key or 401."""
    if request._get_current_object().method == "OPTIONS":
        return
    token = _checked_token()
    if isinstance(token, ApiError):
        raise token
    if token is not None:
        get_tokens().ensure_not_revoked(token)
        return
    settings = current_app.config["SETTINGS"]
    if not settings.require_api_key:
        return
    key = presented_key()
    if key is None:
        raise ApiError(401, "missing_api_key", "An API key is required: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'.",
                       {"WWW-Authenticate": 'Bearer realm="kimi-backend"'})
    if not _is_valid(key, settings.valid_api_keys):
        raise ApiError(401, "invalid_api_key", "The API key is not valid.",
                       {"WWW-Authenticate": 'Bearer realm="kimi-backend", error="invalid_token"'})


def ip_identity() -> str:
    """The client address as an identity (after ProxyFix, when TRUSTED_PROXY_COUNT trusts the
    proxies in front)."""
    return f"ip:{request._get_current_object().remote_addr or 'unknown'}"


def client_identity() -> str:
    """Who the limiter counts: `sub:<subject>` for a valid browser token, `key:<fingerprint>`
    for a valid client key, otherwise the client IP. The limiter runs before
    `require_client_key`, so the credential is checked here too. Worked out once per request
    (the limiter and the access log both ask)."""
    request_globals = g._get_current_object()
    identity = request_globals.get("client_identity")
    if identity is None:
        token = verified_token()
        key = presented_key() if token is None else None
        if token is not None:
            identity = token.identity
        elif key and _is_valid(key, current_app.config["SETTINGS"].valid_api_keys):
            identity = f"key:{key_fingerprint(key)}"
        else:
            identity = ip_identity()
        request_globals.client_identity = identity
    return identity
