"""Gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make run` starts).

Every value comes from the environment (and `.env`), with defaults chosen by measurement;
see README "Capacity". The settings are validated here, in the master, so a bad value stops
startup with one sentence before any worker boots.
"""
import importlib.util
import os
import sys
from pathlib import Path

from dotenv import load_dotenv

load_dotenv(os.environ.get("DOTENV_PATH", ".env"))


def _load_config_module():
    """Loads kimi_backend/config.py alone. Importing the package here would import Flask,
    requests and urllib3 into the master before gevent patches the workers, which breaks
    gevent's ssl patching for HTTPS upstreams."""
    spec = importlib.util.spec_from_file_location("_kimi_config", Path(__file__).parent / "kimi_backend" / "config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building Settings
    spec.loader.exec_module(module)
    return module


_config = _load_config_module()
try:
    _settings = _config.load_settings(os.environ)
except _config.ConfigError as exc:
    print(f"kimi-backend: configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(1)

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{_settings.port}"
# Not `sync`: it kills any response that outlives `timeout`, and so every long stream.
worker_class = os.environ.get("WORKER_CLASS", "gevent")
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "2000"))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
backlog = 2048
timeout = 60
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT_S", "30"))
keepalive = 5
errorlog = "-"
loglevel = _settings.log_level
accesslog = None
# gunicorn 24+ opens a control socket at one fixed path per user; several instances on a
# host (or ProtectSystem=strict under systemd) trip over it, and nothing here uses it.
control_socket_disable = True
# TRUSTED_PROXY_COUNT (ProxyFix, in the app) alone decides which forwarded headers to believe;
# gunicorn's own default trusts X-Forwarded-Proto from any loopback client.
forwarded_allow_ips = ""


def on_starting(server):
    """Refuses memory:// limiter storage with several workers, whichever way the worker count
    was given (WEB_CONCURRENCY, -w, GUNICORN_CMD_ARGS): in-memory counters live in one
    process, so N workers would let N x the limit through."""
    if server.cfg.workers > 1 and _settings.rate_limit_storage_uri.startswith("memory://"):
        print(f"kimi-backend: configuration error: {server.cfg.workers} workers were asked for but "
              "RATE_LIMIT_STORAGE_URI is memory://, which only counts within one process; "
              "set RATE_LIMIT_STORAGE_URI=redis://... or use one worker (WEB_CONCURRENCY=1).",
              file=sys.stderr, flush=True)
        sys.exit(1)
