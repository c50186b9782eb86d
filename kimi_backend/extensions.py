"""Extension objects, created unbound and configured per app through `app.config` (Talisman,
which keeps its options on itself, is created per app), and the limiter's helpers."""
from __future__ import annotations

import logging
import math
import time

from flask import Flask, Response, current_app
from flask_cors import CORS
from flask_limiter import Limiter
from flask_talisman import Talisman
from limits.errors import StorageError

from .auth import client_identity
from .errors import error_response

log = logging.getLogger("kimi_backend")

# The policy the static test page satisfies: only external same-origin scripts and styles.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
                           "form-action 'self'; frame-ancestors 'none'")
# Features a chat API never needs; named ones only (browsers log unknown names as errors).
PERMISSIONS_POLICY = "camera=(), geolocation=(), microphone=(), payment=(), usb=()"
# How long the limiter waits on Redis before the request is treated as a storage outage.
REDIS_TIMEOUT_S = 1.0


class AppLimiter(Limiter):
    """flask-limiter's `Limiter`, reconfigured on every `init_app`: the stock one keeps the
    first app's fallback switch, storage options and storage-outage state, so every app built
    after it in the same process (tests, several configs) would inherit them."""

    def init_app(self, app: Flask) -> None:
        """Resets the per-app state the stock `init_app` only ever sets once, then binds."""
        self._in_memory_fallback_enabled = bool(app.config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"])
        self._storage_options = {}
        self._storage_dead = False
        super().init_app(app)


limiter = AppLimiter(key_func=client_identity)
cors = CORS()

# One budget per client shared by every API route, as the original service's
# `app.use('/api/', limiter)` had it; health and static routes carry no limit.
api_rate_limit = limiter.shared_limit(lambda: current_app.config["API_RATE_LIMIT"], scope="api")


def add_rate_limit_headers(response: Response) -> Response:
    """`X-RateLimit-Limit/Remaining/Reset` on every limited response, and `Retry-After` on
    the limiter's own 429. (flask-limiter's built-in headers are off because they put a
    Retry-After on every response and overwrite the upstream's own on a forwarded 429.)"""
    current = limiter.current_limit
    if current is None:
        return response
    try:
        # The window's own expiry (RequestLimit.reset_at adds a second to it).
        reset_at, remaining = current.window
        response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(remaining)
        response.headers["X-RateLimit-Reset"] = str(math.ceil(reset_at))
        if current.breached:
            response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    except Exception:  # the storage went away after the check: the answer matters more than its headers
        log.warning("rate-limit headers skipped: limiter storage unavailable")
    return response


def init_security_headers(app: Flask, force_https: bool) -> None:
    """nosniff, `X-Frame-Options: DENY`, `Referrer-Policy`, the CSP, and HSTS on HTTPS
    requests (as the proxy forwarded them, see proxies.py); plain HTTP is redirected only with
    FORCE_HTTPS. One Talisman per app: it keeps its options on itself."""
    app.extensions["talisman"] = Talisman(
        app, force_https=force_https, frame_options="DENY", content_security_policy=CONTENT_SECURITY_POLICY,
        referrer_policy="no-referrer", permissions_policy=PERMISSIONS_POLICY,
        strict_transport_security_include_subdomains=False,
        # No cookies here; this also spares Talisman a config write on every request.
        session_cookie_secure=False)


def limiter_storage_options(storage_uri: str) -> dict:
    """Storage errors as `StorageError` (one type to answer, whatever the backend), and a
    bounded wait on Redis so an unreachable server cannot hold requests for long."""
    options: dict = {"wrap_exceptions": True}
    if storage_uri.startswith(("redis://", "rediss://", "redis+unix://")):
        options.update(socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
    return options


def rate_limit_unavailable(exc: StorageError) -> Response:
    """Fail-closed (`RATE_LIMIT_FAIL_OPEN=false`) and the limiter's storage is down: refuse
    the request with a 503 rather than serve it unlimited."""
    log.error("rate-limit storage unavailable (%s): refusing the request", type(exc.storage_error).__name__)
    return error_response(503, "rate_limit_unavailable",
                          "The rate limiter's storage is unavailable, so requests are refused for now; retry shortly.",
                          {"Retry-After": "5"})
