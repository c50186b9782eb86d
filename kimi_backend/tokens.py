"""Browser tokens: short-lived credentials a web page can hold. The site's own backend mints
them (or the service does, for anonymous sessions); each names a subject, the origins it may
be used from, when it expires, and optionally its own rate limit and token budget.

Tokens are JWTs signed with HS256 (PyJWT) under TOKEN_SECRET: the first secret signs, every
one verifies, so a secret can be rotated without logging anyone out. Revocation is per
subject: a counter in the limiter's storage (so every worker and host sees it) that each
revocation increments; a token carries the counter's value at minting (`rev`) and is refused
once the counter has moved past it. A counter rather than a time: the storage offers an
atomic increment but no compare-and-set, and a counter does not depend on the hosts' clocks
agreeing.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import jwt
from flask import Flask, current_app
from limits import RateLimitItem, RateLimitItemPerSecond

from .config.settings import window_seconds
from .errors import ApiError

ALGORITHM = "HS256"
ISSUER = "kimi-backend"
ANY_ORIGIN = "*"
ANONYMOUS_PREFIX = "anon:"
REQUIRED_CLAIMS = ["iss", "sub", "iat", "exp", "jti", "origins", "rev"]
# The storage expires every key; a revocation counter must outlive any token it refuses.
REVOCATION_KEEP_S = 10 * 365 * 24 * 3600
BEARER_CHALLENGE = 'Bearer realm="kimi-backend", error="invalid_token"'


@dataclass(frozen=True)
class RateLimitClaim:
    """A token's own rate limit: `max_requests` per `window_ms`."""

    max_requests: int
    window_ms: int

    @property
    def item(self) -> RateLimitItem:
        """The limit as the limiter counts it; windows are whole seconds, rounded up (as the
        service's own)."""
        return RateLimitItemPerSecond(self.max_requests, window_seconds(self.window_ms))


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    subject: str
    origins: tuple[str, ...]
    issued_at: int
    expires_at: int
    revision: int
    token_budget: int | None = None
    rate_limit: RateLimitClaim | None = None

    @property
    def identity(self) -> str:
        """The client identity limits, budgets and logs know the token's holder by."""
        return f"sub:{self.subject}"

    @property
    def anonymous(self) -> bool:
        """True for a token of an anonymous session (`POST /api/session`)."""
        return self.subject.startswith(ANONYMOUS_PREFIX)

    def allows_origin(self, origin: str | None) -> bool:
        """Whether a request from `origin` (None: the request named none) may use the token."""
        return ANY_ORIGIN in self.origins or origin in self.origins


def iso_utc(epoch_s: float) -> str:
    """An epoch time as ISO 8601 UTC with a `Z`, to the second."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _invalid() -> ApiError:
    return ApiError(401, "invalid_api_key", "The token is not valid (bad signature or malformed).",
                    {"WWW-Authenticate": BEARER_CHALLENGE})


class TokenService:
    """Mints, verifies and revokes browser tokens. `clock` (epoch seconds) is what expiry is
    measured against; tests replace it to move time."""

    def __init__(self, signing_secrets: tuple[str, ...], max_ttl_s: int, limiter: Any,
                 clock: Callable[[], float] = time.time):
        self.secrets = signing_secrets
        self.max_ttl_s = max_ttl_s
        # The app's `AppLimiter`: revocations are written to its shared `.storage` and read
        # with `.read()`, which follows RATE_LIMIT_FAIL_OPEN while that storage is down.
        self.limiter = limiter
        self.clock = clock

    def mint(self, subject: str, origins: tuple[str, ...], ttl_s: int, token_budget: int | None = None,
             rate_limit: RateLimitClaim | None = None) -> tuple[str, TokenClaims]:
        """A signed token and its claims; `ttl_s` is capped at TOKEN_MAX_TTL_S."""
        issued_at = int(self.clock())
        # A fresh anonymous subject has never been revoked: no storage read needed.
        revision = 0 if subject.startswith(ANONYMOUS_PREFIX) else self._revocations(subject)
        claims = TokenClaims(subject=subject, origins=tuple(origins), issued_at=issued_at,
                             expires_at=issued_at + min(ttl_s, self.max_ttl_s), revision=revision,
                             token_budget=token_budget, rate_limit=rate_limit)
        payload: dict[str, Any] = {"iss": ISSUER, "sub": subject, "iat": claims.issued_at, "exp": claims.expires_at,
                                   "jti": secrets.token_hex(8), "origins": list(claims.origins), "rev": revision}
        if token_budget is not None:
            payload["token_budget"] = token_budget
        if rate_limit is not None:
            payload["rate_limit"] = {"max_requests": rate_limit.max_requests, "window_ms": rate_limit.window_ms}
        return jwt.encode(payload, self.secrets[0], algorithm=ALGORITHM), claims

    def verify(self, token: str, origin: str | None) -> TokenClaims:
        """The claims of a token signed by one of the secrets, unexpired, and usable from
        `origin`; otherwise 401 `invalid_api_key` or `token_expired`, or 403
        `origin_not_allowed`. Revocation is checked separately (`ensure_not_revoked`): it
        reads the storage."""
        claims = self._claims(self._decode(token))
        if self.clock() >= claims.expires_at:
            raise ApiError(401, "token_expired", "The token has expired: ask the site for a new one.",
                           {"WWW-Authenticate": BEARER_CHALLENGE})
        if not claims.allows_origin(origin):
            where = f"from the origin '{origin}'" if origin else "without an Origin header"
            raise ApiError(403, "origin_not_allowed", f"This token may not be used {where}: it is bound to its site's origins.")
        return claims

    def ensure_not_revoked(self, claims: TokenClaims) -> None:
        """401 `token_revoked` when the token's subject was revoked after it was minted."""
        if claims.revision < self._revocations(claims.subject):
            raise ApiError(401, "token_revoked", "The token has been revoked.", {"WWW-Authenticate": BEARER_CHALLENGE})

    def revoke(self, subject: str) -> None:
        """Makes every token of `subject` minted so far invalid, on every worker and host. Written
        to the shared storage only: a revocation that cannot be stored fails (503) rather than
        silently holding in one worker."""
        self.limiter.storage.incr(self._revocation_key(subject), REVOCATION_KEEP_S)

    def _revocations(self, subject: str) -> int:
        return self.limiter.read(self._revocation_key(subject))

    @staticmethod
    def _revocation_key(subject: str) -> str:
        return f"kimi/revoked/{subject}"

    def _decode(self, token: str) -> dict:
        # Expiry is checked against `clock`, not by PyJWT against the wall clock.
        options = {"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False}
        for secret in self.secrets:
            try:
                return jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER, options=options)
            except jwt.InvalidSignatureError:
                continue  # perhaps signed with another of the secrets
            except jwt.InvalidTokenError:
                break
        raise _invalid()

    @staticmethod
    def _claims(payload: dict) -> TokenClaims:
        try:
            rate_limit = payload.get("rate_limit")
            claims = TokenClaims(
                subject=payload["sub"], origins=tuple(payload["origins"]), issued_at=int(payload["iat"]),
                expires_at=int(payload["exp"]), revision=int(payload["rev"]),
                token_budget=None if payload.get("token_budget") is None else int(payload["token_budget"]),
                rate_limit=None if rate_limit is None else RateLimitClaim(int(rate_limit["max_requests"]),
                                                                          int(rate_limit["window_ms"])))
        except (KeyError, TypeError, ValueError):
            raise _invalid() from None
        if not all(isinstance(origin, str) for origin in claims.origins):
            raise _invalid()
        return claims


def init_app(app: Flask, limiter: Any) -> None:
    """Creates the app's token service when TOKEN_SECRET is set (tokens are off otherwise)."""
    settings = app.config["SETTINGS"]
    if settings.token_secrets:
        app.extensions["tokens"] = TokenService(settings.token_secrets, settings.token_max_ttl_s, limiter)


def get_tokens() -> TokenService | None:
    """The current app's token service, or None when browser tokens are off."""
    return current_app.extensions.get("tokens")
