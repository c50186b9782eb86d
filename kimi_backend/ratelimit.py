"""The API rate limit: one fixed-window budget per client (its browser token's subject, its
valid key, else its IP), shared by every API route, plus the limits a browser token adds;
counted by flask-limiter in its configured storage (`memory://` in one process, the host's
shared `sqlite://` store of several workers, or Redis), with `RATE_LIMIT_FAIL_OPEN` deciding
what happens while that storage is down."""
from __future__ import annotations

import functools
import logging
import math
import time
from typing import Callable, TypeVar

import flask
from flask import Blueprint, Flask, Response, current_app, g
from flask_limiter import Limiter
from limits import RateLimitItem
from limits.errors import StorageError

from .auth import client_identity, ip_identity, verified_token
from .errors import HTTP_MESSAGES, ApiError, error_response
# Imported for their side effect: defining the storages registers the `sqlite://` scheme and
# our `memory://` with `limits`, before flask-limiter looks RATE_LIMIT_STORAGE_URI up.
from . import memory_counts, shared_counts  # noqa: F401
from .tokens import TokenClaims

log = logging.getLogger("kimi_backend")

T = TypeVar("T")
API_SCOPE = "api"
TOKEN_SCOPE = "token"
# How long the limiter waits on Redis before the request is treated as a storage outage.
REDIS_TIMEOUT_S = 1.0
# While the storage is down (fail-open), how often to see whether it is back.
RECOVERY_CHECK_S = 5.0


class AppLimiter(Limiter):
    """flask-limiter's `Limiter` with two changes.

    - It is reconfigured on every `init_app`: the stock one keeps the first app's fallback
      switch, storage options and storage-outage state, so every app built after it in the
      same process (tests, several configs) would inherit them.
    - Its per-request check counts our one shared limit (and what a browser token adds)
      directly in flask-limiter's own fixed-window strategy's storage (`self.limiter`, which
      is the in-memory fallback while the storage is down). The stock check resolves every
      route's limits, decorators, exemptions and meta-limits on each request, several times
      the cost of the direct count and a visible share of a whole request's CPU.

    Both replace private members of flask-limiter: requirements.txt pins its minor version and
    tests/test_rate_limits.py fails if those members change. For the same reason the stock
    per-request hooks that only the stock check needs are taken off the app.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._api_blueprints: set[str] = set()
        self._recovery_checked_at = 0.0

    def init_app(self, app: Flask) -> None:
        """Resets the per-app state the stock `init_app` only ever sets once, then binds."""
        self._in_memory_fallback_enabled = bool(app.config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"])
        self._storage_options = {}
        self._storage_dead = False
        super().init_app(app)
        # The stock after_request hook (its headers, its conditional deductions) and teardown
        # (resetting its per-request context) serve only the stock check and its decorators,
        # which nothing here uses; yet each built that context on every request.
        app.after_request_funcs[None] = [
            hook for hook in app.after_request_funcs[None]
            if not (isinstance(hook, functools.partial) and hook.func is Limiter._Limiter__inject_headers)]
        app.teardown_request_funcs[None] = [
            hook for hook in app.teardown_request_funcs[None]
            if getattr(hook, "__func__", None) is not Limiter._Limiter__release_context]

    def limit_api(self, blueprint: Blueprint) -> Blueprint:
        """Puts every route of `blueprint` under the shared API budget."""
        self._api_blueprints.add(blueprint.name)
        return blueprint

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        """`before_request`: counts the request against its client's API budget (and a browser
        token's, see `_token_limits`; CORS preflights excepted); a 429 once one is spent. A storage
        error is a 503 (fail-closed) or a switch to in-memory counting
        (fail-open) until the storage answers again."""
        # Preflights carry no key and cost nothing upstream: counted, they would spend a keyed
        # browser user's IP budget (a NAT's) on every page load.
        request = flask.request._get_current_object()  # one context lookup for both questions
        if not self.enabled or request.method == "OPTIONS" or request.blueprint not in self._api_blueprints:
            return
        states = self._with_fallback(self._count_request)
        # With a browser token there are several counts: the one nearest its limit speaks for
        # the request (its headers, and its Retry-After on a 429).
        state = min(states, key=lambda state: state[1].amount - state[3])
        g.api_rate_limit = state
        if state[3] > state[1].amount:
            raise ApiError(429, "rate_limited", HTTP_MESSAGES[429])

    def read(self, key: str) -> int:
        """A counter from the storage counting now (e.g. a token revocation), with the same
        outage handling as the counts."""
        return self._with_fallback(lambda: self.limiter.storage.get(key))

    def check(self, limit: RateLimitItem, identity: str, scope: str, message: str) -> None:
        """Counts the request against a view's own extra limit (e.g. anonymous sessions per
        address); a 429 with `message` once it is spent."""
        state = self._with_fallback(lambda: self._hit(limit, identity, scope))
        if state[3] > state[1].amount:
            g.api_rate_limit = state
            raise ApiError(429, "rate_limited", message)

    def _with_fallback(self, operation: Callable[[], T]) -> T:
        # A storage error is raised (fail-closed, answered 503) or switches the counting to
        # in-memory storage (fail-open) until the storage answers again.
        if self._storage_dead:
            self._check_recovery()
        try:
            return operation()
        except StorageError:
            if not self._in_memory_fallback_enabled or self._storage_dead:
                raise
            log.warning("rate-limit storage unreachable: falling back to in-memory storage until it answers again")
            self._storage_dead = True
            self._recovery_checked_at = time.monotonic()
            return operation()

    def _count_request(self) -> list[tuple]:
        service_limit = current_app.config["API_RATE_LIMIT"]
        limits = [(service_limit, client_identity(), API_SCOPE)]
        token = verified_token()
        if token is not None:
            limits += _token_limits(token, service_limit)
        return [self._hit(*limit) for limit in limits]

    def _hit(self, item: RateLimitItem, identity: str, scope: str) -> tuple:
        key = item.key_for(self._key_prefix, identity, scope)
        count = self._count(item, key)
        return (self.limiter.storage, item, key, count)

    def _count(self, item: RateLimitItem, key: str) -> int:
        # The fixed-window strategy's `hit` is this same increment compared with the limit;
        # keeping the count spares the rate-limit headers a second read (two Redis calls).
        return self.limiter.storage.incr(key, item.get_expiry())

    def _check_recovery(self) -> None:
        now = time.monotonic()
        if now - self._recovery_checked_at < RECOVERY_CHECK_S:
            return
        self._recovery_checked_at = now
        if self.storage.check():
            log.info("rate-limit storage is back: counting there again")
            self._storage_dead = False


def _token_limits(token: TokenClaims, service_limit: RateLimitItem) -> list[tuple[RateLimitItem, str, str]]:
    """What a browser token adds to the service's limit on its subject: its own `rate_limit`,
    for the subject as a whole (however many machines share the token); and for an anonymous
    session, the caller's address under the service's limit, as without a token, since anyone
    can start a fresh session but not from a fresh address."""
    limits = []
    if token.rate_limit is not None:
        limits.append((token.rate_limit.item, token.identity, TOKEN_SCOPE))
    if token.anonymous:
        limits.append((service_limit, ip_identity(), API_SCOPE))
    return limits


def add_rate_limit_headers(response: Response) -> Response:
    """`X-RateLimit-Limit/Remaining/Reset` on every limited response, and `Retry-After` on our
    own 429 (an upstream 429 keeps the upstream's Retry-After)."""
    state = g.get("api_rate_limit")
    if state is None:
        return response
    storage, item, key, count = state
    try:
        reset_at = storage.get_expiry(key)
    except StorageError:  # the storage went away after the check: the answer matters more than its headers
        log.warning("rate-limit headers skipped: limiter storage unavailable")
        return response
    # Added, not set: only this hook writes them (setting one scans every header there already).
    headers = response.headers
    headers.add("X-RateLimit-Limit", str(item.amount))
    headers.add("X-RateLimit-Remaining", str(max(0, item.amount - count)))
    headers.add("X-RateLimit-Reset", str(math.ceil(reset_at)))
    if count > item.amount:
        response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    return response


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

