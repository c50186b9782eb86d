"""Gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make run` starts).

Every value comes from the environment (and `.env`), with defaults chosen by measurement;
see README "Capacity". The settings, gunicorn's included, are declared and parsed in
kimi_backend/config/; they are loaded here, in the master, so a bad value stops startup with
one sentence before any worker boots.
"""
import gc
import glob
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dotenv import load_dotenv
from gunicorn.errors import HaltServer

load_dotenv(os.environ.get("DOTENV_PATH", ".env"))


def _load_alone(name: str):
    """Loads kimi_backend/<name>.py, or the package kimi_backend/<name>/, alone. Importing
    kimi_backend here would import Flask, requests and urllib3 into the master before gevent
    patches the workers, which breaks gevent's ssl patching for HTTPS upstreams."""
    path = Path(__file__).parent / "kimi_backend" / name
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(f"_kimi_{name.replace('/', '_')}", path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(f"_kimi_{name.replace('/', '_')}", path.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building Settings
    spec.loader.exec_module(module)
    return module


_config = _load_alone("config")
try:
    _settings = _config.load_settings(os.environ)
except _config.ConfigError as exc:
    print(f"kimi-backend: configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(1)

# Each open stream holds two sockets (client and upstream): raise the soft open-files limit
# (often 1,024) as far as the hard limit allows, so the default 2,000 connections fit. A refusal
# leaves the limit as it was rather than stopping the start.
_load_alone("system").raise_open_files_limit()

bind = f"{_settings.host}:{_settings.port}"
# Not `sync`: it kills any response that outlives `timeout`, and so every long stream.
# gevent and gthread are gunicorn's workers with the service's additions (kimi_backend/workers.py):
# JSON for the errors gunicorn answers itself, a per-address connection cap (off behind a
# trusted proxy, whose address every connection has), and in-band stream endings on SIGTERM.
_workers = _load_alone("workers")
if _settings.worker_class == "gevent":
    worker_class = _workers.gevent_worker(0 if _settings.trusted_proxy_count else _settings.max_connections_per_ip)
else:
    worker_class = _workers.thread_worker()
workers = _settings.web_concurrency
worker_connections = _settings.worker_connections
threads = _settings.gunicorn_threads
backlog = 2048
timeout = 60
graceful_timeout = _settings.graceful_timeout_s
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
    """Gives several workers one host-shared store for the limiter's counts when the storage
    is memory://, whichever way the worker count was given (WEB_CONCURRENCY, -w,
    GUNICORN_CMD_ARGS); then prepares the metrics directory."""
    # Storage URIs' schemes are case-insensitive for the limits library too: `Memory://` is memory.
    if server.cfg.workers > 1 and _settings.rate_limit_storage_uri.lower().startswith("memory://"):
        _share_counts(server)
    _prepare_metrics_dir()
    server.halt = _halt_past_failed_boots(server.halt)


def _halt_past_failed_boots(halt):
    """gunicorn halts when a worker cannot load the app (a configuration error found in the
    worker, e.g. an unreachable USAGE_DATABASE_URL); with several workers the others usually
    fail the same way while it stops them, and each such exit raises HaltServer again inside
    the halt: a traceback, and on_exit never runs. The first reason stands; stopping goes on."""
    def halt_once(reason=None, exit_status=0):
        while True:
            try:
                return halt(reason, exit_status)
            except HaltServer:
                continue  # that worker is reaped already: stop the rest
    return halt_once


_COUNTS_DIR_PREFIX = "kimi-backend-counts-"


def _share_counts(server):
    """In-memory counts live in one process, so N workers would each let the whole limit
    through: the workers (forked after this, inheriting the environment) count in one SQLite
    file (kimi_backend/shared_counts.py) in a fresh private directory, on tmpfs where there is
    one: the service's runtime directory (systemd's RuntimeDirectory=), else the user's, else
    /dev/shm, else the temporary directory."""
    candidates = [os.environ.get("RUNTIME_DIRECTORY"), os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"]
    parent = next((path for path in candidates if path and os.access(path, os.W_OK | os.X_OK)), None)
    try:
        path = tempfile.mkdtemp(prefix=_COUNTS_DIR_PREFIX, dir=parent)
    except OSError as exc:
        print(f"kimi-backend: configuration error: RATE_LIMIT_STORAGE_URI is memory:// with {server.cfg.workers} "
              f"workers, and no directory for their shared counts could be created ({exc.strerror}).",
              file=sys.stderr, flush=True)
        sys.exit(1)
    os.environ["RATE_LIMIT_STORAGE_URI"] = f"sqlite://{path}/counts.sqlite3"
    server.log.info("%d workers share their limit counts in %s", server.cfg.workers, path)


# --- Observability: JSON logs for gunicorn's own lines, and the metrics shared by workers.
_logs = _load_alone("observability/logs")
logconfig_dict = _logs.gunicorn_logconfig(_settings.log_level)
logger_class = _logs.GunicornLogger

_METRICS_DIR_PREFIX = "kimi-backend-metrics-"


def _prepare_metrics_dir():
    """Called from on_starting, before any worker imports prometheus-client (which reads
    PROMETHEUS_MULTIPROC_DIR then): every worker writes its metrics there and /metrics sums
    them. A fresh directory by default; an operator's is emptied, since files of a previous
    run would add their old counts to this run's totals."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def post_worker_init(worker):
    """Moves what loading the app made (modules, the app, its settings: some 80,000 objects)
    out of the garbage collector's reach: they live as long as the worker, yet every full
    collection would walk them all again, stalling every stream of the worker for tens of
    milliseconds each time a burst of new streams triggers one."""
    gc.freeze()


def child_exit(server, worker):
    """Drops a dead worker's live gauges (active streams); its counters stay in the totals.
    This is prometheus_client.multiprocess.mark_process_dead, which the master cannot
    import: prometheus_client imports ssl."""
    for name in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"gauge_live*_{worker.pid}.db")):
        os.remove(name)


def on_exit(server):
    """Removes the metrics directory when this file made it (an operator's stays), and the
    workers' shared counts."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(path).startswith(_METRICS_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
    counts = os.path.dirname(os.environ.get("RATE_LIMIT_STORAGE_URI", "").removeprefix("sqlite://"))
    if os.path.basename(counts).startswith(_COUNTS_DIR_PREFIX):
        shutil.rmtree(counts, ignore_errors=True)
