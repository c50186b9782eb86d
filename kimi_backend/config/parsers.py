"""The parsers of setting values: each takes the variable's name and its raw value and returns
the typed value, or raises `ConfigError` with one sentence naming the variable."""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Callable


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def text(name: str, raw: Any) -> str:
    """Free text, surrounding white space dropped."""
    return str(raw).strip()


def boolean(name: str, raw: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (empty is false)."""
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}.")


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    """A parser of whole numbers from `minimum` to `maximum` (no upper bound when None)."""
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


def seconds(name: str, raw: Any) -> float:
    """A positive, finite number of seconds (fractions allowed)."""
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {raw!r}.")
    return value


def items(name: str, raw: Any) -> tuple[str, ...]:
    """Comma- or line-separated values (a list or tuple from a test's overrides is taken as it is)."""
    entries = raw if isinstance(raw, (list, tuple)) else re.split(r"[,\n]", str(raw))
    return tuple(entry.strip() for entry in entries if str(entry).strip())


def choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    """A parser of one of `choices`, case-insensitive."""
    def parse(name: str, raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}.")
        return value
    return parse


def url(name: str, raw: Any) -> str:
    """An http:// or https:// URL, without a trailing slash."""
    value = str(raw).strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}.")
    return value


ORIGIN_PATTERN = re.compile(r"^https?://[^/\s*]+$")


def origins(name: str, raw: Any) -> tuple[str, ...]:
    """CORS origins: `*`, or exact `scheme://host[:port]` values (a browser's Origin header
    never has a path, so a trailing slash would silently match nothing)."""
    values = items(name, raw)
    for origin in values:
        if origin != "*" and not ORIGIN_PATTERN.match(origin):
            raise ConfigError(f"{name} entries must be * or scheme://host[:port] with no path, got {origin!r}.")
    return values


# A host name, or `.name` for it and every name under it; no scheme, port, path or address.
HOST_PATTERN = re.compile(r"^\.?(?=.*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")


def hosts(name: str, raw: Any) -> tuple[str, ...]:
    """Host names (`api.example.com`, or `.example.com` for it and its subdomains), lowercased."""
    values = tuple(value.lower() for value in items(name, raw))
    if not values:
        raise ConfigError(f"{name} is empty: unset it to answer for any host, or list host names.")
    for host in values:
        if not HOST_PATTERN.match(host):
            raise ConfigError(f"{name} entries must be host names (api.example.com, or .example.com for it and "
                              f"its subdomains) with no scheme, port, path or IP address, got {host!r}.")
    return values


def model_aliases(name: str, raw: Any) -> dict[str, str]:
    """`old=new,old2=new2`: model ids answered by other ids."""
    aliases = {}
    for item in items(name, raw):
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new:
            raise ConfigError(f"{name} entries must look like old-model=new-model, got {item!r}.")
        aliases[old] = new
    return aliases


# HS256 keys shorter than the hash (256 bits) are weak (RFC 7518 §3.2).
MIN_TOKEN_SECRET_CHARS = 32


def token_secrets(name: str, raw: Any) -> tuple[str, ...]:
    """Browser-token signing secrets: the first signs, all verify (rotation)."""
    values = items(name, raw)
    if any(len(value) < MIN_TOKEN_SECRET_CHARS for value in values):
        raise ConfigError(f"{name} entries must be at least {MIN_TOKEN_SECRET_CHARS} characters each; generate one with "
                          "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'.")
    return values


def secret_file(name: str, raw: Any) -> str:
    """Reads a secret from a file (systemd credentials, Docker secrets)."""
    path = str(raw).strip()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"{name} points to {path!r}, which cannot be read ({exc.strerror}).") from None


def optional_whole_number(minimum: int) -> Callable[[str, Any], int | None]:
    """A whole number, or None for an empty value (the setting is off)."""
    parse = whole_number(minimum)

    def parse_optional(name: str, raw: Any) -> int | None:
        return None if str(raw).strip() == "" else parse(name, raw)
    return parse_optional


_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
            "postgresql+psycopg": "postgresql+psycopg"}


def database_url(name: str, raw: Any) -> str:
    """A SQLAlchemy URL for SQLite or PostgreSQL; `postgresql://` means the psycopg driver we ship."""
    value = str(raw).strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(f"{name} must be a sqlite:///path or postgresql://user@host/db URL, got a {scheme or 'malformed'} URL.")
    return f"{_SCHEMES[scheme]}://{rest}"


_KEY_ID = re.compile(r"^(?:key:)?([0-9a-f]{12})$")


def key_budgets(name: str, raw: Any) -> tuple[tuple[str, int], ...]:
    """`<key-id>:<tokens>,...`: per-key daily token budgets, the key id being the 12 hex
    digits a client key has in the logs (`key:<id>`)."""
    budgets = []
    for entry in items(name, raw):
        key, _, tokens = entry.rpartition(":")
        match = _KEY_ID.match(key.strip())
        if not match:
            raise ConfigError(f"{name} entries must be <key-id>:<tokens>, the key id being the 12 hex digits "
                              f"of key:<id> in the logs, got {entry!r}.")
        budgets.append((match.group(1), whole_number(0)(name, tokens)))
    return tuple(budgets)


def key_id(key: str) -> str:
    """The short, stable id of a client key (the first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def key_file_entries(name: str, content: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """The keys of a key file, one per line (or comma-separated), each optionally followed by
    ` budget=<tokens>`, its daily token budget."""
    keys, budgets = [], []
    for entry in items(name, content):
        key, *options = entry.split()
        for option in options:
            label, _, tokens = option.partition("=")
            if label != "budget":
                raise ConfigError(f"{name}: after a key only budget=<tokens> may follow, got {option!r}.")
            budgets.append((key_id(key), whole_number(0)(name, tokens)))
        keys.append(key)
    return tuple(keys), tuple(budgets)
