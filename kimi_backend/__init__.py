"""Kimi Backend: a small, safe HTTP API between web frontends and Moonshot AI's Kimi chat API."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from flask import Flask, g, request, send_from_directory
from limits import RateLimitItemPerSecond
from limits.errors import StorageError

from .config import load_settings, read_environment
from .config.settings import Settings
from .errors import register_error_handlers
from .extensions import cors, init_security_headers, limiter
from .ratelimit import add_rate_limit_headers, limiter_storage_options, rate_limit_unavailable
from .lifecycle import Shutdown
from .moonshot.client import MoonshotClient
from .moonshot.reading import ReplyLimits
from .observability import access_log
from .observability.logs import configure_logging
from .proxies import trust_proxies
from .responses import KimiResponse
from .service import KimiService
from . import intake, origins, tokens, usage

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
EXPOSED_HEADERS = ["X-Request-ID", "X-Kimi-Dropped-Params", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                   "X-RateLimit-Reset", usage.BUDGET_HEADER]
ALLOWED_HEADERS = ["Content-Type", "x-api-key", "Authorization", "X-Request-ID"]
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# The most functions whose sync form KimiFlask remembers: the app's hooks, views and error
# handlers number a few dozen; past this, anything new is worked out each time, as by Flask.
_SYNC_CACHE_MAX = 512


class KimiFlask(Flask):
    """Flask, remembering which functions are coroutines instead of asking `inspect` for each of
    a request's twenty-odd hooks, views and handlers on every request (`ensure_sync` is Flask's
    documented place to change how functions are run), and answering with `KimiResponse`."""

    response_class = KimiResponse

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync_forms: dict[Callable, Callable] = {}

    def ensure_sync(self, func: Callable) -> Callable:
        """Flask's `ensure_sync`, worked out once per function."""
        sync = self._sync_forms.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if len(self._sync_forms) < _SYNC_CACHE_MAX:
                self._sync_forms[func] = sync
        return sync


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Builds the app: settings → logging → upstream → usage (budgets, ledger) → request ids,
    access log, host check and body intake → extensions → errors → routes.

    `test_config` overrides environment variables by name (same names, same parsing).
    """
    settings = load_settings(read_environment(os.environ, os.environ.get("DOTENV_PATH", ".env")), test_config)
    app = KimiFlask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    configure_app(app, settings)
    configure_logging(settings.log_level, access_log.current_request_id)
    connect_upstream(app, settings)
    usage.init_app(app, settings)
    register_request_hooks(app)
    access_log.init_app(app)
    origins.init_app(app, settings.allowed_hosts)
    intake.init_app(app)
    register_extensions(app, settings)
    register_error_handlers(app)
    register_blueprints(app)
    app.extensions["shutdown"] = Shutdown()
    return app


def configure_app(app: Flask, settings: Settings) -> None:
    """Puts the settings where Flask and the extensions read them."""
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_RATE_LIMIT=RateLimitItemPerSecond(settings.rate_limit_max_requests, settings.rate_limit_window_s),
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=settings.rate_limit_storage_uri,
        RATELIMIT_STRATEGY="fixed-window",
        RATELIMIT_HEADERS_ENABLED=False,
        RATELIMIT_KEY_PREFIX="kimi",
        RATELIMIT_STORAGE_OPTIONS=limiter_storage_options(settings.rate_limit_storage_uri),
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=settings.rate_limit_fail_open,
        RATELIMIT_SWALLOW_ERRORS=False,
    )
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.wsgi_app = trust_proxies(app.wsgi_app, settings.trusted_proxy_count)


def connect_upstream(app: Flask, settings: Settings) -> None:
    """Creates the Moonshot client; offline, it points at an in-process simulator over
    loopback, so offline and live share every line of the client code path."""
    base_url = settings.base_url
    if settings.offline:
        from .moonshot.simulator import start_in_thread
        server = start_in_thread(api_key=settings.api_key)
        app.extensions["simulator"] = server
        base_url = server.base_url
    client = MoonshotClient(
        base_url, settings.api_key,
        connect_timeout_s=settings.connect_timeout_s, read_timeout_s=settings.read_timeout_s,
        completion_timeout_s=settings.completion_timeout_s,
        max_retries=settings.max_retries, retry_backoff_s=settings.retry_backoff_s,
        retry_max_wait_s=settings.retry_max_wait_s, pool_size=settings.pool_size, proxy=settings.upstream_proxy,
        limits=ReplyLimits(settings.max_reply_bytes, settings.max_line_bytes))
    app.extensions["kimi_service"] = KimiService(settings, client)


def register_extensions(app: Flask, settings: Settings) -> None:
    """Binds the security headers, the limiter, browser tokens and CORS to this app."""
    # Talisman first: a plain-HTTP request is redirected before it spends any rate-limit budget.
    init_security_headers(app, settings.force_https)
    limiter.init_app(app)
    app.after_request(add_rate_limit_headers)
    app.register_error_handler(StorageError, rate_limit_unavailable)
    tokens.init_app(app, limiter)
    origins = list(settings.cors_origins)
    if settings.allowed_origins is None and settings.production:
        logging.getLogger("kimi_backend").warning(
            "ALLOWED_ORIGINS is not set: in production no browser origin may call the API "
            "(set ALLOWED_ORIGINS=https://your.site, or * for any origin).")
    # OpenAI's SDKs in a browser send their own headers (X-Stainless-*, OpenAI-Organization, ...);
    # no cookies are involved, so /v1 allows whichever headers a preflight asks for.
    cors.init_app(app, resources={r"/api/*": {"origins": origins}, r"/v1/*": {"origins": origins, "allow_headers": "*"},
                                  r"/health*": {"origins": origins}},
                  allow_headers=ALLOWED_HEADERS, expose_headers=EXPOSED_HEADERS, max_age=600,
                  send_wildcard=True)  # `*` is sent as `*`, not as an echo of the caller's Origin


def register_request_hooks(app: Flask) -> None:
    """Gives every request an id (a sane incoming `X-Request-ID` is kept) and echoes it."""

    @app.before_request
    def assign_request_id() -> None:
        # One context lookup each (`request.x` and `g.x = ...` make three Python calls each).
        incoming = request._get_current_object().environ.get("HTTP_X_REQUEST_ID")
        g._get_current_object().request_id = (incoming if incoming and _SANE_REQUEST_ID.match(incoming)
                                              else new_request_id())

    @app.after_request
    def echo_request_id(response):
        # Added, not set: only this hook writes it (setting scans every header there already).
        response.headers.add("X-Request-ID", g._get_current_object().get("request_id") or new_request_id())
        return response


def new_request_id() -> str:
    """32 random hex digits (what uuid4().hex gave, less its fixed bits, for a fifth of its cost)."""
    return os.urandom(16).hex()


def register_blueprints(app: Flask) -> None:
    """Mounts the routes and the test page."""
    from .api import chat, health, metrics, openai, openapi
    from .api import tokens as token_routes
    from .api import usage as usage_api

    app.register_blueprint(health.bp)
    app.register_blueprint(health.info_bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(openai.bp)
    app.register_blueprint(health.ready_bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(token_routes.admin_bp)
    app.register_blueprint(token_routes.session_bp)
    app.register_blueprint(usage_api.bp)

    @app.get("/")
    @openapi.produces("text/html")
    def index():
        """The test page."""
        return send_from_directory(STATIC_DIR, "index.html")
