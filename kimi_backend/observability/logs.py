"""Structured logs: every line one JSON object with the request id when there is one, for
the service's own lines and (through gunicorn.conf.py's `logconfig_dict`) gunicorn's.

gunicorn.conf.py loads this file on its own in the master, so it imports nothing of the
package and nothing that imports `ssl` before gevent patches the workers.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Callable

import orjson
from gunicorn.glogging import Logger as GunicornBaseLogger

# For the lines orjson refuses (an integer past 64 bits, a lone surrogate in a text).
_FALLBACK_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: `ts`, `level`, `logger`, `pid`, `message`, the
    request id, any fields passed as `extra={"fields": {...}}`, and `exc` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # orjson: a seventh of json's time for a request's line, the same JSON for it.
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:
            return _FALLBACK_ENCODER.encode(entry)


def configure_logging(level: str, current_request_id: Callable[[], str | None]) -> None:
    """Sets the service's log level, stamps every record made while a request is served
    with its id, and, when nothing else has (gunicorn configures the root logger through
    gunicorn.conf.py, pytest through its own handlers), logs JSON to stderr."""
    logging.getLogger("kimi_backend").setLevel(level.upper())
    # No line shows a thread's or process's name or the calling source line: not working them
    # out for every record (the logging module's documented switches, "Optimization" in its
    # HOWTO) is a third of what a request's log line costs.
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    _stamp_request_ids(current_request_id)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _stamp_request_ids(current_request_id: Callable[[], str | None]) -> None:
    # A record factory rather than a filter: it reaches every logger's records, the
    # libraries' too, whichever handler ends up writing them. Installed once per process.
    base = logging.getLogRecordFactory()
    if getattr(base, "stamps_request_ids", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.request_id = current_request_id()
        return record

    factory.stamps_request_ids = True
    logging.setLogRecordFactory(factory)


class GunicornLogger(GunicornBaseLogger):
    """Gunicorn's logger without its access line (the service writes one richer line per
    request, so gunicorn's would double the cost and the volume), with Python warnings
    routed into the JSON log too."""

    def setup(self, cfg) -> None:
        """Gunicorn's setup (which applies `logconfig_dict`), then warnings into logging."""
        super().setup(cfg)
        logging.captureWarnings(True)

    def access(self, resp, req, environ, request_time) -> None:
        """Writes nothing: see the class docstring."""


def gunicorn_logconfig(level: str) -> dict:
    """The `logconfig_dict` that puts gunicorn's own lines and the service's through
    `JsonFormatter` on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"console": handler, "error_console": handler},
        "root": {"level": level.upper(), "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }
