"""Gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make run` starts).

Every value comes from the environment (and `.env`), with defaults chosen by measurement;
see README "Capacity". The settings are validated here, in the master, so a bad value stops
startup with one sentence before any worker boots.
"""
import os
import shutil
import sys
import tempfile

from dotenv import load_dotenv

load_dotenv(os.environ.get("DOTENV_PATH", ".env"))

# --- Observability (1/2): before anything imports prometheus_client, which reads this once.
# Every worker inherits the directory and writes its metrics there; /metrics sums them.
_METRICS_DIR_PREFIX = "kimi-backend-metrics-"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_METRICS_DIR_PREFIX)

from kimi_backend.config import ConfigError, load_settings  # noqa: E402  (after .env is loaded)

try:
    _settings = load_settings(os.environ)
except ConfigError as exc:
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

if workers > 1 and _settings.rate_limit_storage_uri.startswith("memory://"):
    # In-memory counters live in one process: N workers would let N x the limit through.
    print("kimi-backend: configuration error: WEB_CONCURRENCY is "
          f"{workers} but RATE_LIMIT_STORAGE_URI is memory://, which only counts within one process; "
          "set RATE_LIMIT_STORAGE_URI=redis://... or use one worker.", file=sys.stderr, flush=True)
    sys.exit(1)


# --- Observability (2/2): JSON logs for gunicorn's own lines, and the metrics directory's life.
from kimi_backend.logs import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(_settings.log_level)
logger_class = "kimi_backend.logs.GunicornLogger"


def on_starting(server):
    """Starts every run with an empty metrics directory: files of a previous run would add
    their old counts to this run's totals."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def child_exit(server, worker):
    """Drops a dead worker's live gauges (active streams); its counters stay in the totals."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Removes the metrics directory when this file made it (an operator's stays)."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.path.basename(path).startswith(_METRICS_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
