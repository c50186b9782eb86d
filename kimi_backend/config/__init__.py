"""The service's settings, built once in a fixed order: defaults → `.env` → process
environment → the test's overrides. A bad value raises `ConfigError` with one sentence naming
the variable, and startup stops there.

- settings.py declares every setting once (field, variable, default, parser, meaning);
- parsers.py turns raw values into typed ones;
- this module reads the variables and applies the rules that join several of them.

gunicorn.conf.py loads this package on its own, in the master: it imports nothing of
kimi_backend outside it, and no Flask or requests.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

from dotenv import dotenv_values

from .parsers import ConfigError, key_file_entries
from .settings import VARIABLES, Settings, Variable

OFFLINE_API_KEY = "sk-offline-simulator"


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
    values = {variable.name: _parse(variable, source.get(variable.name)) for variable in VARIABLES}
    fields = {settings_field.name: values[settings_field.metadata["variables"][0].name]
              for settings_field in dataclasses.fields(Settings)}
    fields.update(_joined(values))
    return Settings(**fields)


def _parse(variable: Variable, raw: Any) -> Any:
    """The variable's typed value; unset means its default, and so does empty when the default
    is None (unset)."""
    if raw is None or (isinstance(raw, str) and raw.strip() == "" and variable.default is None):
        raw = variable.default
    return None if raw is None else variable.parse(variable.name, raw)


_SENDABLE_KEY = re.compile(r"[!-~]+")


def _joined(values: dict[str, Any]) -> dict[str, Any]:
    """The fields that several variables decide, and the checks across variables."""
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
    elif not _SENDABLE_KEY.fullmatch(api_key):
        # It goes into an HTTP header as it is: a line break would end the header there.
        raise ConfigError("KIMI_API_KEY holds a space, a line break or another character that is not printable ASCII; "
                          "a Moonshot key is one word of printable ASCII (sk-...).")

    file_keys, file_budgets = key_file_entries("VALID_API_KEYS_FILE", values["VALID_API_KEYS_FILE"] or "")
    client_keys = values["VALID_API_KEYS"] + file_keys
    if values["REQUIRE_API_KEY"] and not client_keys:
        raise ConfigError("REQUIRE_API_KEY is true but VALID_API_KEYS (or VALID_API_KEYS_FILE) lists no keys.")
    if values["ANONYMOUS_TOKENS"] and not values["TOKEN_SECRET"]:
        raise ConfigError("ANONYMOUS_TOKENS is true but TOKEN_SECRET is not set: anonymous sessions are signed browser tokens.")
    if values["ANON_TOKEN_TTL_S"] > values["TOKEN_MAX_TTL_S"]:
        raise ConfigError(f"ANON_TOKEN_TTL_S ({values['ANON_TOKEN_TTL_S']}) must not exceed "
                          f"TOKEN_MAX_TTL_S ({values['TOKEN_MAX_TTL_S']}).")

    # The upstream pool matches how many requests one gunicorn worker serves at once.
    worker_concurrency = values["WORKER_CONNECTIONS" if values["WORKER_CLASS"] == "gevent" else "GUNICORN_THREADS"]
    return {
        "env": env,
        "api_key": api_key,
        "offline": offline,
        "valid_api_keys": client_keys,
        "pool_size": values["UPSTREAM_POOL_SIZE"] or worker_concurrency,
        "web_concurrency": values["WEB_CONCURRENCY"] or usable_cpus(),
        # TOKEN_BUDGETS wins over a budget in the key file for the same key.
        "token_budgets": file_budgets + values["TOKEN_BUDGETS"],
    }


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's limit,
    not the host's count); the count of all CPUs where the platform has no affinity."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
