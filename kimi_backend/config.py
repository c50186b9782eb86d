"""The service's settings: defaults, the environment variable names (the original Node
service's and ours), parsing and validation.

Settings are built once, in `create_app`, in a fixed order: defaults → `.env` → process
environment → the test's overrides. A bad value raises `ConfigError` with one sentence
naming the variable, and startup stops there.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from dotenv import dotenv_values

ENVIRONMENTS = ("development", "production")
THINKING_DEFAULTS = ("model", "on", "off")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
OFFLINE_API_KEY = "sk-offline-simulator"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _text(name: str, raw: Any) -> str:
    return str(raw).strip()


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}.")


def _int(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def parse(name: str, raw: Any) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}.") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ConfigError(f"{name} must be {bound}, got {value}.")
        return value
    return parse


def _seconds(name: str, raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {raw!r}.")
    return value


def _list(name: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)):
        items = raw
    else:
        items = re.split(r"[,\n]", str(raw))
    return tuple(item.strip() for item in items if str(item).strip())


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(name: str, raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}.")
        return value
    return parse


def _url(name: str, raw: Any) -> str:
    value = str(raw).strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}.")
    return value


ORIGIN_PATTERN = re.compile(r"^https?://[^/\s*]+$")


def _origins(name: str, raw: Any) -> tuple[str, ...]:
    """CORS origins: `*`, or exact `scheme://host[:port]` values (a browser's Origin header
    never has a path, so a trailing slash would silently match nothing)."""
    origins = _list(name, raw)
    for origin in origins:
        if origin != "*" and not ORIGIN_PATTERN.match(origin):
            raise ConfigError(f"{name} entries must be * or scheme://host[:port] with no path, got {origin!r}.")
    return origins


def _aliases(name: str, raw: Any) -> dict[str, str]:
    """`old=new,old2=new2`: model ids answered by other ids."""
    aliases = {}
    for item in _list(name, raw):
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new:
            raise ConfigError(f"{name} entries must look like old-model=new-model, got {item!r}.")
        aliases[old] = new
    return aliases


# HS256 keys shorter than the hash (256 bits) are weak (RFC 7518 §3.2).
MIN_TOKEN_SECRET_CHARS = 32


def _token_secrets(name: str, raw: Any) -> tuple[str, ...]:
    """Browser-token signing secrets: the first signs, all verify (rotation)."""
    values = _list(name, raw)
    if any(len(value) < MIN_TOKEN_SECRET_CHARS for value in values):
        raise ConfigError(f"{name} entries must be at least {MIN_TOKEN_SECRET_CHARS} characters each; generate one with "
                          "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'.")
    return values


def _secret_file(name: str, raw: Any) -> str:
    """Reads a secret from a file (systemd credentials, Docker secrets)."""
    path = str(raw).strip()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"{name} points to {path!r}, which cannot be read ({exc.strerror}).") from None


def _optional_int(minimum: int) -> Callable[[str, Any], int | None]:
    """A whole number, or None for an empty value (the setting is off)."""
    parse = _int(minimum)

    def parse_optional(name: str, raw: Any) -> int | None:
        return None if str(raw).strip() == "" else parse(name, raw)
    return parse_optional


_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
            "postgresql+psycopg": "postgresql+psycopg"}


def _database_url(name: str, raw: Any) -> str:
    """A SQLAlchemy URL for SQLite or PostgreSQL; `postgresql://` means the psycopg driver we ship."""
    value = str(raw).strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(f"{name} must be a sqlite:///path or postgresql://user@host/db URL, got a {scheme or 'malformed'} URL.")
    return f"{_SCHEMES[scheme]}://{rest}"


_KEY_ID = re.compile(r"^(?:key:)?([0-9a-f]{12})$")


def _key_budgets(name: str, raw: Any) -> tuple[tuple[str, int], ...]:
    """`<key-id>:<tokens>,...`: per-key daily token budgets, the key id being the 12 hex
    digits a client key has in the logs (`key:<id>`)."""
    budgets = []
    for entry in _list(name, raw):
        key, _, tokens = entry.rpartition(":")
        match = _KEY_ID.match(key.strip())
        if not match:
            raise ConfigError(f"{name} entries must be <key-id>:<tokens>, the key id being the 12 hex digits "
                              f"of key:<id> in the logs, got {entry!r}.")
        budgets.append((match.group(1), _int(0)(name, tokens)))
    return tuple(budgets)


def key_id(key: str) -> str:
    """The short, stable id of a client key (the first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _key_file_entries(name: str, text: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """The keys of a key file, one per line (or comma-separated), each optionally followed by
    ` budget=<tokens>`, its daily token budget."""
    keys, budgets = [], []
    for entry in _list(name, text):
        key, *options = entry.split()
        for option in options:
            label, _, tokens = option.partition("=")
            if label != "budget":
                raise ConfigError(f"{name}: after a key only budget=<tokens> may follow, got {option!r}.")
            budgets.append((key_id(key), _int(0)(name, tokens)))
        keys.append(key)
    return tuple(keys), tuple(budgets)


def worker_concurrency(environ: Mapping[str, str]) -> int:
    """How many requests one gunicorn worker serves at once, from the same variables
    gunicorn.conf.py reads, so the upstream connection pool can match it."""
    worker_class = environ.get("WORKER_CLASS", "gevent").strip()
    if worker_class == "gevent":
        return _int(1)("WORKER_CONNECTIONS", environ.get("WORKER_CONNECTIONS", "2000"))
    return _int(1)("GUNICORN_THREADS", environ.get("GUNICORN_THREADS", "32"))


# variable name -> (default, parser). `None` as default means "unset".
VARIABLES: dict[str, tuple[Any, Callable[[str, Any], Any]]] = {
    # The original Node service's names.
    "KIMI_API_KEY": (None, _text),
    "KIMI_BASE_URL": ("https://api.moonshot.cn/v1", _url),
    "PORT": ("3000", _int(1, 65535)),
    "NODE_ENV": ("development", _choice(ENVIRONMENTS)),
    "APP_ENV": (None, _choice(ENVIRONMENTS)),
    "RATE_LIMIT_WINDOW_MS": ("900000", _int(1)),
    "RATE_LIMIT_MAX_REQUESTS": ("100", _int(1)),
    "REQUIRE_API_KEY": ("false", _bool),
    "VALID_API_KEYS": ("", _list),
    "ALLOWED_ORIGINS": (None, _origins),
    # Ours.
    "KIMI_API_KEY_FILE": (None, _secret_file),
    "VALID_API_KEYS_FILE": (None, _secret_file),
    "KIMI_OFFLINE": ("0", _bool),
    "RATE_LIMIT_STORAGE_URI": ("memory://", _text),
    "TRUSTED_PROXY_COUNT": ("0", _int(0, 10)),
    # Unset: the model table's default (config.py is loaded on its own by gunicorn.conf.py,
    # so it cannot import the table; ModelPolicy fills it in).
    "DEFAULT_MODEL": (None, _text),
    "MODEL_ALIASES": ("", _aliases),
    "DEFAULT_THINKING": ("model", _choice(THINKING_DEFAULTS)),
    "ALLOWED_MODELS": ("", _list),
    "UPSTREAM_CONNECT_TIMEOUT_S": ("5", _seconds),
    "UPSTREAM_READ_TIMEOUT_S": ("120", _seconds),
    "UPSTREAM_COMPLETION_TIMEOUT_S": ("910", _seconds),
    "UPSTREAM_MAX_RETRIES": ("2", _int(0, 10)),
    "UPSTREAM_RETRY_BACKOFF_S": ("0.5", _seconds),
    "UPSTREAM_RETRY_MAX_WAIT_S": ("10", _seconds),
    "UPSTREAM_POOL_SIZE": (None, _int(1)),
    "UPSTREAM_PROXY": (None, _url),
    "MODELS_CACHE_TTL_S": ("300", _seconds),
    "SSE_KEEPALIVE_S": ("15", _seconds),
    "MAX_BODY_BYTES": ("1048576", _int(1024)),
    "REQUEST_BODY_TIMEOUT_S": ("30", _seconds),
    "MAX_CONNECTIONS_PER_IP": ("100", _int(0)),
    "UPSTREAM_MAX_REPLY_BYTES": ("33554432", _int(1024)),
    "UPSTREAM_MAX_LINE_BYTES": ("1048576", _int(1024)),
    "LOG_LEVEL": ("info", _choice(LOG_LEVELS)),
    "RATE_LIMIT_FAIL_OPEN": ("true", _bool),
    "FORCE_HTTPS": ("false", _bool),
    "LOG_BODIES": ("false", _bool),
    "METRICS_TOKEN": (None, _text),
    "READY_CACHE_S": ("5", _seconds),
    "READY_TIMEOUT_S": ("2", _seconds),
    "ADMIN_API_KEY": (None, _text),
    "TOKEN_SECRET": ("", _token_secrets),
    "TOKEN_MAX_TTL_S": ("3600", _int(1, 604800)),
    "ANONYMOUS_TOKENS": ("false", _bool),
    "ANON_TOKEN_TTL_S": ("600", _int(1, 604800)),
    "ANON_TOKEN_BUDGET": ("20000", _int(1)),
    "ANON_SESSIONS_PER_HOUR": ("10", _int(1)),
    "USAGE_LEDGER": ("true", _bool),
    "USAGE_DATABASE_URL": ("sqlite:///kimi-usage.sqlite3", _database_url),
    "USAGE_QUEUE_SIZE": ("10000", _int(1)),
    "USAGE_FLUSH_INTERVAL_S": ("1", _seconds),
    "TOKEN_BUDGET_PER_DAY": ("", _optional_int(1)),
    "TOKEN_BUDGETS": ("", _key_budgets),
    "TOKEN_BUDGET_TOTAL_PER_DAY": ("", _optional_int(1)),
    "TOKEN_BUDGET_OUTPUT_RESERVE": ("4096", _int(1)),
}


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads, typed and validated."""

    env: str
    port: int
    api_key: str = field(repr=False)
    base_url: str
    offline: bool
    rate_limit_window_ms: int
    rate_limit_max_requests: int
    rate_limit_storage_uri: str
    require_api_key: bool
    valid_api_keys: tuple[str, ...] = field(repr=False)
    allowed_origins: tuple[str, ...] | None
    trusted_proxy_count: int
    default_model: str | None
    model_aliases: dict[str, str]
    default_thinking: str
    allowed_models: tuple[str, ...]
    connect_timeout_s: float
    read_timeout_s: float
    completion_timeout_s: float
    max_retries: int
    retry_backoff_s: float
    retry_max_wait_s: float
    pool_size: int
    upstream_proxy: str | None
    models_cache_ttl_s: float
    sse_keepalive_s: float
    max_body_bytes: int
    request_body_timeout_s: float
    max_connections_per_ip: int
    max_reply_bytes: int
    max_line_bytes: int
    log_level: str
    rate_limit_fail_open: bool
    force_https: bool
    log_bodies: bool
    metrics_token: str | None = field(repr=False)
    ready_cache_s: float
    ready_timeout_s: float
    admin_api_key: str | None = field(repr=False)
    token_secrets: tuple[str, ...] = field(repr=False)
    token_max_ttl_s: int
    anonymous_tokens: bool
    anon_token_ttl_s: int
    anon_token_budget: int
    anon_sessions_per_hour: int
    usage_ledger: bool
    usage_database_url: str = field(repr=False)
    usage_queue_size: int
    usage_flush_interval_s: float
    token_budget_per_day: int | None
    token_budgets: tuple[tuple[str, int], ...]
    token_budget_total_per_day: int | None
    token_budget_output_reserve: int

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
    def rate_limit(self) -> str:
        """The limit in flask-limiter's notation; windows are whole seconds, rounded up."""
        seconds = max(1, math.ceil(self.rate_limit_window_ms / 1000))
        return f"{self.rate_limit_max_requests} per {seconds} second"


def read_environment(environ: Mapping[str, str], dotenv_path: str | None) -> dict[str, str]:
    """Merges `.env` (when present) under the process environment: the environment wins,
    as with python-dotenv's default."""
    merged: dict[str, str] = {}
    if dotenv_path and os.path.isfile(dotenv_path):
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(environ)
    return merged


def load_settings(environ: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Builds and validates the settings from an environment mapping plus overrides."""
    source = dict(environ)
    source.update(overrides or {})
    values: dict[str, Any] = {}
    for name, (default, parse) in VARIABLES.items():
        raw = source.get(name)
        if raw is None or (isinstance(raw, str) and raw.strip() == "" and default is None):
            raw = default
        values[name] = None if raw is None else parse(name, raw)

    env = values["APP_ENV"] or values["NODE_ENV"]
    api_key = values["KIMI_API_KEY"] or values["KIMI_API_KEY_FILE"] or ""
    offline = values["KIMI_OFFLINE"]
    if not api_key and not offline:
        if env == "production":
            raise ConfigError(
                "KIMI_API_KEY is not set: production refuses to start without it "
                "(set KIMI_API_KEY or KIMI_API_KEY_FILE, or KIMI_OFFLINE=1 to run on the offline simulator).")
        offline = True
    if offline:
        api_key = OFFLINE_API_KEY

    file_keys, file_budgets = _key_file_entries("VALID_API_KEYS_FILE", values["VALID_API_KEYS_FILE"] or "")
    client_keys = values["VALID_API_KEYS"] + file_keys
    if values["REQUIRE_API_KEY"] and not client_keys:
        raise ConfigError("REQUIRE_API_KEY is true but VALID_API_KEYS (or VALID_API_KEYS_FILE) lists no keys.")
    if values["ANONYMOUS_TOKENS"] and not values["TOKEN_SECRET"]:
        raise ConfigError("ANONYMOUS_TOKENS is true but TOKEN_SECRET is not set: anonymous sessions are signed browser tokens.")
    if values["ANON_TOKEN_TTL_S"] > values["TOKEN_MAX_TTL_S"]:
        raise ConfigError(f"ANON_TOKEN_TTL_S ({values['ANON_TOKEN_TTL_S']}) must not exceed "
                          f"TOKEN_MAX_TTL_S ({values['TOKEN_MAX_TTL_S']}).")

    return Settings(
        env=env,
        port=values["PORT"],
        api_key=api_key,
        base_url=values["KIMI_BASE_URL"],
        offline=offline,
        rate_limit_window_ms=values["RATE_LIMIT_WINDOW_MS"],
        rate_limit_max_requests=values["RATE_LIMIT_MAX_REQUESTS"],
        rate_limit_storage_uri=values["RATE_LIMIT_STORAGE_URI"],
        require_api_key=values["REQUIRE_API_KEY"],
        valid_api_keys=client_keys,
        allowed_origins=values["ALLOWED_ORIGINS"],
        trusted_proxy_count=values["TRUSTED_PROXY_COUNT"],
        default_model=values["DEFAULT_MODEL"] or None,
        model_aliases=values["MODEL_ALIASES"],
        default_thinking=values["DEFAULT_THINKING"],
        allowed_models=values["ALLOWED_MODELS"],
        connect_timeout_s=values["UPSTREAM_CONNECT_TIMEOUT_S"],
        read_timeout_s=values["UPSTREAM_READ_TIMEOUT_S"],
        completion_timeout_s=values["UPSTREAM_COMPLETION_TIMEOUT_S"],
        max_retries=values["UPSTREAM_MAX_RETRIES"],
        retry_backoff_s=values["UPSTREAM_RETRY_BACKOFF_S"],
        retry_max_wait_s=values["UPSTREAM_RETRY_MAX_WAIT_S"],
        pool_size=values["UPSTREAM_POOL_SIZE"] or worker_concurrency(source),
        upstream_proxy=values["UPSTREAM_PROXY"],
        models_cache_ttl_s=values["MODELS_CACHE_TTL_S"],
        sse_keepalive_s=values["SSE_KEEPALIVE_S"],
        max_body_bytes=values["MAX_BODY_BYTES"],
        request_body_timeout_s=values["REQUEST_BODY_TIMEOUT_S"],
        max_connections_per_ip=values["MAX_CONNECTIONS_PER_IP"],
        max_reply_bytes=values["UPSTREAM_MAX_REPLY_BYTES"],
        max_line_bytes=values["UPSTREAM_MAX_LINE_BYTES"],
        log_level=values["LOG_LEVEL"],
        rate_limit_fail_open=values["RATE_LIMIT_FAIL_OPEN"],
        force_https=values["FORCE_HTTPS"],
        log_bodies=values["LOG_BODIES"],
        metrics_token=values["METRICS_TOKEN"] or None,
        ready_cache_s=values["READY_CACHE_S"],
        ready_timeout_s=values["READY_TIMEOUT_S"],
        admin_api_key=values["ADMIN_API_KEY"] or None,
        token_secrets=values["TOKEN_SECRET"],
        token_max_ttl_s=values["TOKEN_MAX_TTL_S"],
        anonymous_tokens=values["ANONYMOUS_TOKENS"],
        anon_token_ttl_s=values["ANON_TOKEN_TTL_S"],
        anon_token_budget=values["ANON_TOKEN_BUDGET"],
        anon_sessions_per_hour=values["ANON_SESSIONS_PER_HOUR"],
        usage_ledger=values["USAGE_LEDGER"],
        usage_database_url=values["USAGE_DATABASE_URL"],
        usage_queue_size=values["USAGE_QUEUE_SIZE"],
        usage_flush_interval_s=values["USAGE_FLUSH_INTERVAL_S"],
        token_budget_per_day=values["TOKEN_BUDGET_PER_DAY"],
        # TOKEN_BUDGETS wins over a budget in the key file for the same key.
        token_budgets=file_budgets + values["TOKEN_BUDGETS"],
        token_budget_total_per_day=values["TOKEN_BUDGET_TOTAL_PER_DAY"],
        token_budget_output_reserve=values["TOKEN_BUDGET_OUTPUT_RESERVE"],
    )
