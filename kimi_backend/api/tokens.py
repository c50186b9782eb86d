"""Browser tokens over HTTP: `POST /api/tokens` and `DELETE /api/tokens/<subject>`, which the
site's own backend calls with the admin key to mint and revoke them, and `POST /api/session`,
which gives a page on an allowed origin an anonymous token (ANONYMOUS_TOKENS)."""
from __future__ import annotations

import re
import secrets

from flask import Blueprint, abort, current_app, jsonify, request
from limits import RateLimitItemPerHour
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..admin import require_admin_key
from ..auth import ip_identity, request_origin
from ..config.parsers import ORIGIN_PATTERN
from ..errors import ApiError
from ..extensions import limiter
from ..schemas import parse
from ..tokens import ANONYMOUS_PREFIX, ANY_ORIGIN, RateLimitClaim, TokenClaims, get_tokens, iso_utc
from .openapi import listed

admin_bp = Blueprint("tokens", __name__, url_prefix="/api")
session_bp = Blueprint("session", __name__, url_prefix="/api")
admin_bp.before_request(require_admin_key)
limiter.limit_api(session_bp)

SUBJECT_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
SESSION_SCOPE = "session"


class RateLimitRequest(BaseModel):
    """A token's own rate limit, on top of the service's."""

    model_config = ConfigDict(strict=True, extra="forbid")

    max_requests: int = Field(ge=1, description="Requests allowed per window, for the token's subject.")
    window_ms: int = Field(ge=1, description="The window in milliseconds (rounded up to whole seconds).")


class TokenRequest(BaseModel):
    """`POST /api/tokens`: every field is optional (an empty body mints with the defaults)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    subject: str | None = Field(default=None, pattern=SUBJECT_PATTERN,
                                description="Who the token is for (letters, digits, _.:@-): its limits, budget, log "
                                            "lines and revocation are keyed on it. Default: a random one.")
    origins: list[str] | None = Field(default=None, min_length=1, max_length=50,
                                      description="Origins (scheme://host[:port]) the token may be used from, or "
                                                  "[\"*\"] for any. Default: ALLOWED_ORIGINS.")
    ttl_s: int | None = Field(default=None, ge=1, description="Lifetime in seconds, capped at TOKEN_MAX_TTL_S "
                                                              "(also the default).")
    token_budget: int | None = Field(default=None, ge=1, description="Model tokens the subject may spend per UTC day (its tokens share them).")
    rate_limit: RateLimitRequest | None = None

    @field_validator("origins")
    @classmethod
    def _origins_well_formed(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != ANY_ORIGIN and not ORIGIN_PATTERN.match(origin):
                raise ValueError(f"'{origin}' is not * or scheme://host[:port] with no path")
        return origins


@admin_bp.before_request
def require_tokens() -> None:
    """After the admin key (404 while ADMIN_API_KEY is unset, 401 without it): 503
    `tokens_disabled` while TOKEN_SECRET is unset."""
    if request.method != "OPTIONS" and get_tokens() is None:
        raise ApiError(503, "tokens_disabled", "Browser tokens are disabled: set TOKEN_SECRET to enable them.")


@session_bp.before_request
def require_anonymous_sessions() -> None:
    """404 while ANONYMOUS_TOKENS is off: the route does not exist then."""
    if request.method != "OPTIONS" and not current_app.config["SETTINGS"].anonymous_tokens:
        abort(404)


@admin_bp.post("/tokens")
@listed("Mint a browser token (admin key): {subject?, origins?, ttl_s?, token_budget?, rate_limit?}")
def mint():
    """Mints a browser token (admin key: the site's own backend calls this)."""
    body = parse(TokenRequest, request.get_data() or b"{}")
    settings = current_app.config["SETTINGS"]
    subject = body.subject or f"token:{secrets.token_hex(8)}"
    if subject.startswith(ANONYMOUS_PREFIX):
        raise ApiError(400, "invalid_request", f"Field 'subject' is invalid: '{ANONYMOUS_PREFIX}' is reserved for anonymous sessions.")
    rate_limit = RateLimitClaim(body.rate_limit.max_requests, body.rate_limit.window_ms) if body.rate_limit else None
    token, claims = get_tokens().mint(subject, _token_origins(body.origins, settings.cors_origins),
                                      body.ttl_s or settings.token_max_ttl_s, body.token_budget, rate_limit)
    return _issued(token, claims)


mint.request_schema = TokenRequest  # for the OpenAPI document
mint.empty_body_allowed = True


@admin_bp.delete("/tokens/<subject>")
@listed("Revoke every token of a subject (admin key)")
def revoke(subject: str):
    """Revokes every token of a subject minted so far (admin key)."""
    if not re.match(SUBJECT_PATTERN, subject):
        raise ApiError(400, "invalid_request", "The subject in the path is not a valid subject (letters, digits, _.:@-).")
    tokens = get_tokens()
    tokens.revoke(subject)
    return jsonify(success=True, data={"subject": subject, "revoked_at": iso_utc(tokens.clock())})


@session_bp.post("/session")
@listed("An anonymous browser token for a page on an allowed origin (ANONYMOUS_TOKENS)")
def session():
    """Starts an anonymous session: a short-lived token for a page on an allowed origin."""
    settings = current_app.config["SETTINGS"]
    origin = request_origin()
    if not _may_start_session(origin, settings.cors_origins):
        where = f"the origin '{origin}' is" if origin else "a request without an Origin header is"
        raise ApiError(403, "origin_not_allowed", f"Anonymous sessions are for pages on the allowed origins (ALLOWED_ORIGINS); {where} not one.")
    limiter.check(RateLimitItemPerHour(settings.anon_sessions_per_hour), ip_identity(), SESSION_SCOPE,
                  f"Too many anonymous sessions from this address (at most {settings.anon_sessions_per_hour} an hour). "
                  "Retry after the time in the Retry-After header.")
    subject = ANONYMOUS_PREFIX + secrets.token_urlsafe(12)
    token, claims = get_tokens().mint(subject, (origin,), settings.anon_token_ttl_s, settings.anon_token_budget)
    return _issued(token, claims)


def _token_origins(requested: list[str] | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The origins a minted token is bound to: ALLOWED_ORIGINS by default, or those asked for,
    each allowed by ALLOWED_ORIGINS (elsewhere browsers could not read the answers). `*` (no
    binding, for callers that are not browser pages) may always be asked for explicitly."""
    if requested is None:
        if not allowed:
            raise ApiError(400, "invalid_request", "No origins for the token: pass 'origins', or set ALLOWED_ORIGINS "
                                                   "(while it is unset in production no browser origin is allowed).")
        return (ANY_ORIGIN,) if ANY_ORIGIN in allowed else allowed
    if ANY_ORIGIN not in allowed:
        outside = [origin for origin in requested if origin != ANY_ORIGIN and origin not in allowed]
        if outside:
            raise ApiError(400, "invalid_request", f"Field 'origins' is invalid: '{outside[0]}' is not in ALLOWED_ORIGINS, "
                                                   "so browsers there could not read the answers.")
    return tuple(dict.fromkeys(requested))


def _may_start_session(origin: str | None, allowed: tuple[str, ...]) -> bool:
    # The service's own pages (the test page) count as allowed: they are the operator's.
    own = f"{request.scheme}://{request.host}"
    return origin is not None and (ANY_ORIGIN in allowed or origin in allowed or origin == own)


def _issued(token: str, claims: TokenClaims):
    response = jsonify(success=True, data={"token": token, "expires_at": iso_utc(claims.expires_at),
                                           "subject": claims.subject})
    response.headers["Cache-Control"] = "no-store"  # a credential: no cache may keep it
    return response
