"""Every setting, declared once: the `Settings` field, the environment variable that sets it
(the original Node service's name where it had one), the variable's default, its parser and
what it means. The list of variables (`VARIABLES`) is derived from these declarations.

A default of None means "unset": an empty value counts as unset too. Any other default is
parsed like a value from the environment, so an empty value is parsed as given.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .parsers import (boolean, choice, database_url, hosts, items, key_budgets, model_aliases, optional_whole_number, origins,
                      secret_file, seconds, text, token_secrets, url, whole_number)

ENVIRONMENTS = ("development", "production")
THINKING_DEFAULTS = ("model", "on", "off")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
WORKER_CLASSES = ("gevent", "gthread")


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, its raw default (None: unset), its parser and a
    one-line meaning."""

    name: str
    default: str | None
    parse: Callable[[str, Any], Any]
    meaning: str


def setting(name: str, default: str | None, parse: Callable[[str, Any], Any], meaning: str, *,
            secret: bool = False, also: tuple[Variable, ...] = ()) -> Any:
    """A `Settings` field set by the variable `name`. `also` lists further variables that feed
    the same field (config/__init__.py combines them); a secret is kept out of the repr."""
    return field(repr=not secret, metadata={"variables": (Variable(name, default, parse, meaning), *also)})


def window_seconds(window_ms: int) -> int:
    """A rate-limit window in whole seconds, rounded up (limits count whole seconds)."""
    return max(1, math.ceil(window_ms / 1000))


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads, typed and validated. The original Node service's
    variables come first, then ours, then gunicorn's (read by gunicorn.conf.py)."""

    api_key: str = setting("KIMI_API_KEY", None, text, "the Moonshot key", secret=True, also=(
        Variable("KIMI_API_KEY_FILE", None, secret_file, "a file holding the Moonshot key"),))
    base_url: str = setting("KIMI_BASE_URL", "https://api.moonshot.cn/v1", url, "the upstream base URL")
    port: int = setting("PORT", "3000", whole_number(1, 65535), "the listening port")
    env: str = setting("NODE_ENV", "development", choice(ENVIRONMENTS), "development or production", also=(
        Variable("APP_ENV", None, choice(ENVIRONMENTS), "development or production; wins over NODE_ENV"),))
    rate_limit_window_ms: int = setting("RATE_LIMIT_WINDOW_MS", "900000", whole_number(1), "the rate-limit window (ms)")
    rate_limit_max_requests: int = setting("RATE_LIMIT_MAX_REQUESTS", "100", whole_number(1),
                                           "requests per client per window")
    require_api_key: bool = setting("REQUIRE_API_KEY", "false", boolean, "whether chat calls need a client key")
    valid_api_keys: tuple[str, ...] = setting("VALID_API_KEYS", "", items, "the client keys", secret=True, also=(
        Variable("VALID_API_KEYS_FILE", None, secret_file, "a file of client keys, each with an optional budget"),))
    allowed_origins: tuple[str, ...] | None = setting("ALLOWED_ORIGINS", None, origins, "the CORS origins, or *")
    allowed_hosts: tuple[str, ...] | None = setting("ALLOWED_HOSTS", None, hosts,
                                                    "the host names the service answers for (unset: any)")
    offline: bool = setting("KIMI_OFFLINE", "0", boolean, "forces the offline simulator")
    rate_limit_storage_uri: str = setting("RATE_LIMIT_STORAGE_URI", "memory://", text,
                                          "the limiter storage: memory://, sqlite:///file or redis://")
    trusted_proxy_count: int = setting("TRUSTED_PROXY_COUNT", "0", whole_number(0, 10),
                                       "reverse proxies whose forwarded headers are believed")
    # Unset: the model table's default (config is loaded on its own by gunicorn.conf.py, so it
    # cannot import the table; ModelPolicy fills it in).
    default_model: str | None = setting("DEFAULT_MODEL", None, text, "the model when a request names none")
    model_aliases: dict[str, str] = setting("MODEL_ALIASES", "", model_aliases, "old=new model ids")
    default_thinking: str = setting("DEFAULT_THINKING", "model", choice(THINKING_DEFAULTS),
                                    "thinking by default: model, on, off")
    allowed_models: tuple[str, ...] = setting("ALLOWED_MODELS", "", items, "the models allowed (empty: any)")
    connect_timeout_s: float = setting("UPSTREAM_CONNECT_TIMEOUT_S", "5", seconds, "the connect timeout to Moonshot")
    read_timeout_s: float = setting("UPSTREAM_READ_TIMEOUT_S", "120", seconds, "the longest upstream silence")
    completion_timeout_s: float = setting("UPSTREAM_COMPLETION_TIMEOUT_S", "910", seconds,
                                          "how long a non-streamed chat call may take")
    max_retries: int = setting("UPSTREAM_MAX_RETRIES", "2", whole_number(0, 10), "retries of retryable failures")
    retry_backoff_s: float = setting("UPSTREAM_RETRY_BACKOFF_S", "0.5", seconds, "the first backoff step")
    retry_max_wait_s: float = setting("UPSTREAM_RETRY_MAX_WAIT_S", "10", seconds,
                                      "the most one request waits between retries, in all")
    # Unset: the worker's concurrency (config/__init__.py fills it in).
    pool_size: int = setting("UPSTREAM_POOL_SIZE", None, whole_number(1), "upstream connections kept per worker")
    upstream_proxy: str | None = setting("UPSTREAM_PROXY", None, url, "the outbound proxy for upstream calls")
    models_cache_ttl_s: float = setting("MODELS_CACHE_TTL_S", "300", seconds, "how long the model list is cached")
    sse_keepalive_s: float = setting("SSE_KEEPALIVE_S", "15", seconds, "the gap between keep-alive comments")
    max_body_bytes: int = setting("MAX_BODY_BYTES", "1048576", whole_number(1024), "the largest request body")
    request_body_timeout_s: float = setting("REQUEST_BODY_TIMEOUT_S", "30", seconds,
                                            "how long a request body may take to arrive")
    max_connections_per_ip: int = setting("MAX_CONNECTIONS_PER_IP", "100", whole_number(0),
                                          "open connections per client address, per worker (0: no cap)")
    max_reply_bytes: int = setting("UPSTREAM_MAX_REPLY_BYTES", "33554432", whole_number(1024),
                                   "the most of one upstream reply read")
    max_line_bytes: int = setting("UPSTREAM_MAX_LINE_BYTES", "1048576", whole_number(1024),
                                  "the longest line of an upstream stream")
    log_level: str = setting("LOG_LEVEL", "info", choice(LOG_LEVELS), "the log level")
    rate_limit_fail_open: bool = setting("RATE_LIMIT_FAIL_OPEN", "true", boolean,
                                         "serve on with in-memory limits while the limiter storage is down")
    force_https: bool = setting("FORCE_HTTPS", "false", boolean, "redirect plain HTTP to HTTPS")
    log_bodies: bool = setting("LOG_BODIES", "false", boolean, "log the messages and replies")
    metrics_token: str | None = setting("METRICS_TOKEN", None, text, "the bearer token /metrics needs", secret=True)
    ready_cache_s: float = setting("READY_CACHE_S", "5", seconds, "how long /health/ready reuses its probe")
    ready_timeout_s: float = setting("READY_TIMEOUT_S", "2", seconds, "the timeout of that probe")
    admin_api_key: str | None = setting("ADMIN_API_KEY", None, text, "the admin routes' key", secret=True)
    token_secrets: tuple[str, ...] = setting("TOKEN_SECRET", "", token_secrets, "browser-token signing secrets",
                                             secret=True)
    token_max_ttl_s: int = setting("TOKEN_MAX_TTL_S", "3600", whole_number(1, 604800),
                                   "the longest lifetime of a minted token")
    anonymous_tokens: bool = setting("ANONYMOUS_TOKENS", "false", boolean, "opens POST /api/session")
    anon_token_ttl_s: int = setting("ANON_TOKEN_TTL_S", "600", whole_number(1, 604800),
                                    "the lifetime of an anonymous token")
    anon_token_budget: int = setting("ANON_TOKEN_BUDGET", "20000", whole_number(1), "an anonymous token's budget")
    anon_sessions_per_hour: int = setting("ANON_SESSIONS_PER_HOUR", "10", whole_number(1),
                                          "anonymous sessions one address may start per hour")
    usage_ledger: bool = setting("USAGE_LEDGER", "true", boolean, "record every chat request")
    usage_database_url: str = setting("USAGE_DATABASE_URL", "sqlite:///kimi-usage.sqlite3", database_url,
                                      "the usage database", secret=True)
    usage_queue_size: int = setting("USAGE_QUEUE_SIZE", "10000", whole_number(1), "ledger rows waiting, per worker")
    usage_flush_interval_s: float = setting("USAGE_FLUSH_INTERVAL_S", "1", seconds, "how long a ledger batch gathers")
    token_budget_per_day: int | None = setting("TOKEN_BUDGET_PER_DAY", "", optional_whole_number(1),
                                               "tokens each client may use per UTC day")
    token_budgets: tuple[tuple[str, int], ...] = setting("TOKEN_BUDGETS", "", key_budgets,
                                                         "per-key daily budgets: <key-id>:<tokens>,...")
    token_budget_total_per_day: int | None = setting("TOKEN_BUDGET_TOTAL_PER_DAY", "", optional_whole_number(1),
                                                     "tokens the whole service may use per UTC day")
    token_budget_output_reserve: int = setting("TOKEN_BUDGET_OUTPUT_RESERVE", "4096", whole_number(1),
                                               "output tokens a request without max_tokens reserves")
    host: str = setting("HOST", "0.0.0.0", text, "the interface gunicorn binds")
    worker_class: str = setting("WORKER_CLASS", "gevent", choice(WORKER_CLASSES), "gunicorn's worker class")
    # Unset: one per CPU this process may use (config/__init__.py fills it in).
    web_concurrency: int = setting("WEB_CONCURRENCY", None, whole_number(1), "gunicorn's worker processes")
    worker_connections: int = setting("WORKER_CONNECTIONS", "2000", whole_number(1),
                                      "concurrent connections per gevent worker")
    gunicorn_threads: int = setting("GUNICORN_THREADS", "32", whole_number(1), "threads per gthread worker")
    graceful_timeout_s: int = setting("GRACEFUL_TIMEOUT_S", "30", whole_number(0),
                                      "how long in-flight requests may finish on SIGTERM")

    @property
    def production(self) -> bool:
        """True when running with production defaults and checks."""
        return self.env == "production"

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """The origins browsers may call from: ALLOWED_ORIGINS, or when it is unset any origin
        (`*`) while developing and none in production."""
        if self.allowed_origins is not None:
            return self.allowed_origins
        return () if self.production else ("*",)

    @property
    def rate_limit_window_s(self) -> int:
        """The rate-limit window in whole seconds, rounded up."""
        return window_seconds(self.rate_limit_window_ms)


# Every variable the service reads, in declaration order (the README and .env.example document each).
VARIABLES: tuple[Variable, ...] = tuple(variable for settings_field in dataclasses.fields(Settings)
                                        for variable in settings_field.metadata["variables"])
