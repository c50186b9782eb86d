"""Reading request bodies within bounds: at most MAX_BODY_BYTES (a chunked body, whose size is
not announced, is counted as it arrives) and within REQUEST_BODY_TIMEOUT_S, so a client that
sends its body slowly, or never, cannot hold a connection and its worker slot for long.

Without nginx in front nothing else bounds this: gunicorn's async workers time out a request's
headers (its `keepalive` setting) but not its body.
"""
from __future__ import annotations

import functools
import io
import socket
import threading

from flask import Flask, current_app, request
from gunicorn.http.errors import ParseException
from werkzeug.wsgi import get_input_stream

from .errors import ApiError

_READ_BLOCK = 65536


class BodyTimeout(Exception):
    """The body did not arrive within REQUEST_BODY_TIMEOUT_S."""


def read_body() -> None:
    """`before_request`: reads the whole body now, within the size and time limits, and hands
    it on in memory (so the views' own reading is instant). 413 or 408 otherwise."""
    req = request._get_current_object()  # one context lookup, not one per use of `request`
    environ = req.environ
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not chunked and not req.content_length:
        return
    settings = current_app.config["SETTINGS"]
    if req.content_length is not None and req.content_length > settings.max_body_bytes:
        raise _too_large(settings.max_body_bytes)
    sock = environ.get("gunicorn.socket")
    body = bytearray()
    try:
        with _deadline(settings.request_body_timeout_s, sock):
            # werkzeug's view of the body: bounded by Content-Length (servers such as werkzeug's
            # own hand over the raw connection, which would block past the body's end).
            stream = get_input_stream(environ)
            # An announced length is read to its end and no further: one read, not a second
            # one to find the end, for the usual body that arrived with its headers.
            expected = req.content_length
            while (expected is None or len(body) < expected) and (block := stream.read(_READ_BLOCK)):
                body += block
                if len(body) > settings.max_body_bytes:
                    raise _too_large(settings.max_body_bytes)
    except ParseException:
        raise ApiError(400, "bad_request", "The request body's chunked framing is malformed.") from None
    except (BodyTimeout, OSError):
        if sock is not None:
            _stop_reading(sock)  # the rest of the body is not wanted: the connection ends after the answer
        raise ApiError(408, "request_timeout", f"The request body did not arrive within {settings.request_body_timeout_s:g} "
                       "seconds (REQUEST_BODY_TIMEOUT_S).") from None
    environ["wsgi.input"] = io.BytesIO(bytes(body))
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"Request body too large: the limit is {limit} bytes.")


class _deadline:  # noqa: N801 - used as a function: `with _deadline(seconds, sock):`
    """Raises BodyTimeout in the reading code once `seconds` have passed. Under gevent a
    gevent.Timeout interrupts the read (cheap: a timer on the hub, no greenlet); elsewhere a
    timer thread shuts the socket's read side, which ends a blocked read. (A class rather
    than a generator under `contextlib.contextmanager`: every request with a body passes
    through it, and entering and leaving cost a third as much.)"""

    __slots__ = ("_seconds", "_sock", "_timer", "_expired")

    def __init__(self, seconds: float, sock):
        self._seconds = seconds
        self._sock = sock
        self._timer = self._expired = None

    def __enter__(self) -> None:
        gevent_timeout = _gevent_timeout()
        if gevent_timeout is not None:
            self._timer = gevent_timeout.start_new(self._seconds, BodyTimeout)
        elif self._sock is not None:  # else not served from a socket (the test client): nothing can be slow
            expired = self._expired = threading.Event()
            sock = self._sock

            def expire() -> None:
                expired.set()
                _stop_reading(sock)

            self._timer = threading.Timer(self._seconds, expire)
            self._timer.daemon = True
            self._timer.start()

    def __exit__(self, exc_type, exc, traceback) -> None:
        timer = self._timer
        if timer is None:
            return
        if self._expired is None:
            timer.close()  # gevent's
            return
        timer.cancel()
        if exc_type is None and self._expired.is_set():
            raise BodyTimeout()


@functools.cache
def _gevent_timeout():
    """gevent's Timeout class when this process runs under gevent (its sockets patched);
    asked once per process (the app is loaded after gevent patches a worker)."""
    try:
        from gevent import monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("socket"):
        return None
    import gevent
    return gevent.Timeout


def _stop_reading(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # already closed


def init_app(app: Flask) -> None:
    """Installs the body reader; register after the request record opens, so refusals are logged."""
    app.before_request(read_body)
