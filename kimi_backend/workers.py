"""The gunicorn workers `make run` uses: gunicorn's own gevent and gthread workers with three
additions the WSGI app cannot make itself.

- HTTP that gunicorn refuses before the app sees it (a malformed request line or header, a
  bad or duplicate Content-Length, Content-Length with Transfer-Encoding, bare CR/LF/NUL in a
  header, an oversized URI or header block, a lowercase method, an unknown `Expect`) is
  answered with the service's JSON error shape, a request id and the security headers, not
  gunicorn's HTML page; each such answer writes an access line.
- Connections per client address are capped (gevent worker): beyond MAX_CONNECTIONS_PER_IP a
  new connection gets a JSON 429 and is closed, so a few addresses holding slow connections
  cannot take every slot. Behind a trusted proxy every connection comes from the proxy, so the
  cap is off there (the proxy limits per client: see deploy/nginx.conf).
- SIGTERM tells the app (`app.extensions["shutdown"]`), so open streams end in-band with a
  `shutting_down` event inside the graceful timeout instead of being cut.
- A response's status line and headers leave in the same send as its first body bytes
  (`OneSendResponse`), not in a send of their own, and under gevent each send is first offered
  to the OS socket (`send_all`).
- The worker reads its settings from a `SettledConfig`: each value looked up once, not on
  each of the twenty-odd reads a request makes.
- Each request's response is left in its environ (RESPONSE_KEY), so a stream can be relayed
  from the event loop (hub_relay.py), its bytes framed and counted as gunicorn would.

gunicorn.conf.py loads this file on its own in the master, so it imports nothing of the
package and only gunicorn's own worker modules.
"""
from __future__ import annotations

import json
import logging
import socket
import uuid
from collections import Counter

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.wsgi import HEADER_VALUE_RE as _HEADER_VALUE

access_log = logging.getLogger("kimi_backend.access")

# What each status gunicorn answers by itself means to a client, in the service's words.
_ERRORS = {
    400: ("bad_request", "The request is not valid HTTP/1.1 (its request line, a header or its body framing is malformed)."),
    403: ("forbidden", "The request was refused."),
    414: ("uri_too_long", "The request line is too long."),
    417: ("expectation_failed", "The Expect header names an expectation this server does not support."),
    429: ("too_many_connections", "Too many open connections from this address; close some and retry."),
    431: ("headers_too_large", "The request's headers are too large."),
    501: ("not_implemented", "The request uses a Transfer-Encoding this server does not support."),
}
_INTERNAL = ("internal_error", "Internal server error. Quote the request_id when reporting it.")
# The headers every response of the app carries (flask-talisman's), minus those about pages.
_SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                     ("Referrer-Policy", "no-referrer"),
                     ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"))


def json_error(status: int, reason: str, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete `Connection: close` HTTP response carrying the JSON error for `status`;
    logs the access line the app would have written."""
    code, message = _ERRORS.get(status, _INTERNAL)
    request_id = uuid.uuid4().hex
    body = json.dumps({"success": False, "error": message, "code": code, "request_id": request_id}).encode()
    headers = [("Connection", "close"), ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("X-Request-ID", request_id), *_SECURITY_HEADERS, *extra_headers]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    access_log.info("request", extra={"fields": {"request_id": request_id, "route": "unparsed", "status": status,
                                                 "outcome": code}})
    return head.encode("latin-1") + body


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Stands in for gunicorn's `util.write_error`, which writes an HTML page. gunicorn's text
    (`mesg`) quotes the offending input, so it is not echoed."""
    util.write_nonblock(sock, json_error(status_int, reason))


# Where the service's worker leaves a request's `OneSendResponse` in its environ, for a stream
# relayed from the event loop (hub_relay.py) to frame and count the bytes it writes itself.
RESPONSE_KEY = "kimi_backend.response"


def environ_with_response(create):
    """gunicorn's `wsgi.create`, with the response it builds put in the environ it builds
    (under RESPONSE_KEY) when it is a `OneSendResponse` (HTTP/1)."""

    def create_keeping_response(*args, **kwargs):
        response, environ = create(*args, **kwargs)
        if type(response) is OneSendResponse:
            environ[RESPONSE_KEY] = response
        return response, environ

    return create_keeping_response


# Header names whose kind OneSendResponse remembers: the app's own are a few dozen; past this
# many, new ones are not remembered.
_NAMES_KEPT = 256


class OneSendResponse(wsgi.Response):
    """gunicorn's response writer, but the head (status line and headers) goes out with the
    first body bytes in one `sendall`. gunicorn sends them apart: two system calls, and with
    TCP_NODELAY two packets the client wakes for, on every reply (a few microseconds each in a
    loop over a socket pair; too little to stand out of `make bench`'s noise). Only a body
    written through `write` is joined; `sendfile` (static files) and a response with no body
    (HEAD, 204, 304) send the head alone as before. A chunked response's later writes (a
    stream's events) are framed and sent without gunicorn's write checks, which a chunked body
    always passes. A header whose name was seen before skips the checks of its name
    (`process_headers`). Relies on gunicorn 27's `_emit_body` hook (pinned in requirements)."""

    # Per header name seen: True for an ordinary header, False for Content-Length or a
    # hop-by-hop header, which go through gunicorn's own code. Shared by the worker's responses.
    _name_kinds: dict[str, bool] = {}

    _joining = False  # inside write(): a head made now waits for the body bytes
    _head = b""

    def process_headers(self, headers):
        """gunicorn's `process_headers`, with what it works out from a name (that it is a
        token; whether it is Content-Length or hop-by-hop) remembered per name: an ordinary
        header then costs its value's check, four Python calls instead of ten, for each of a
        reply's dozen headers (counted with cProfile). Any other header goes through gunicorn's
        own code, which also raises what it raises (tests/test_one_send.py compares them)."""
        kinds = self._name_kinds
        kept = self.headers
        for header in headers:
            name, value = header
            plain = type(name) is str
            ordinary = kinds.get(name) if plain else None
            if ordinary and type(value) is str and _HEADER_VALUE.fullmatch(value):
                kept.append((name, value.strip(" \t")))
                continue
            super().process_headers((header,))  # raises for a name or value it refuses
            if plain and ordinary is None and len(kinds) < _NAMES_KEPT:
                lowered = name.lower()
                kinds[name] = lowered != "content-length" and not util.is_hoppish(lowered)

    def send_headers(self):
        if self.headers_sent or not self._joining:
            return super().send_headers()
        lines = self.default_headers()
        lines.extend(["%s: %s\r\n" % header for header in self.headers])  # a list: no generator resumed per header
        self._head = ("%s\r\n" % "".join(lines)).encode("latin-1")
        self.headers_sent = True

    def write(self, arg):
        if self.headers_sent and self.chunked and type(arg) is bytes and arg:
            # A stream's later event, the relay's every write: framed and sent straight away.
            # (Chunked means a body is allowed and has no length to keep to; gunicorn's write
            # would only reach the same `_emit_body` after its checks.)
            self.sent += len(arg)
            send_all(self.sock, b"%X\r\n%s\r\n" % (len(arg), arg))
            return
        self._joining = True
        try:
            super().write(arg)
        finally:
            self._joining = False
            if self._head:  # no body bytes went out (none allowed, none left, or an error): the head alone
                head, self._head = self._head, b""
                self.sock.sendall(head)

    def _emit_body(self, data):
        head, self._head = self._head, b""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        send_all(self.sock, head + data)


def is_plain_gevent_socket(sock) -> bool:
    """Whether `sock` is gevent's plain (not TLS) socket, whose OS socket (`_sock`) gevent
    keeps non-blocking; gevent is not imported for the check."""
    kind = type(sock)
    return kind.__name__ == "socket" and kind.__module__ == "gevent._socket3"


def send_all(sock, data: bytes) -> None:
    """`sock.sendall(data)`, but a plain gevent socket first offers the bytes to the OS socket
    under it: a reply or an event fits the kernel's buffer nearly always, and one `send` there
    skips gevent's `sendall`, which asks the kernel for the buffer size (a system call) and
    slices the data through four Python calls each time; what does not fit is left to gevent's
    `sendall`, which waits for room. gevent's TLS sockets and other servers' sockets are
    left to their own `sendall`."""
    if is_plain_gevent_socket(sock):
        try:
            sent = sock._sock.send(data)  # non-blocking, as gevent keeps it
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    sock.sendall(data)


class SettledConfig:
    """gunicorn's configuration as a worker reads it once the worker runs: each setting's value
    (and `is_ssl`) an attribute, where gunicorn's `Config` looks it up through `__getattr__` and
    its setting's `get()` on every read, two Python calls for each of the 21 reads a request
    makes (parsing it, building its environ, handling it; counted with cProfile). Nothing
    changes a worker's settings after it starts: a reload (SIGHUP) starts new workers. Its
    properties (`worker_class`, `address`, `env`, ...) and anything else still come from
    gunicorn's `Config`."""

    def __init__(self, cfg):
        own = set(dir(type(cfg)))  # its properties and methods, inherited ones too: never cached
        self.__dict__.update((name, setting.get()) for name, setting in cfg.settings.items() if name not in own)
        self.is_ssl = cfg.is_ssl  # a property, read twice per request, that only reads two settings
        self._config = cfg

    def __getattr__(self, name):
        return getattr(self._config, name)


class _ServiceWorkerMixin:
    """JSON for gunicorn's own error answers, one send per response head and first body
    bytes, settings read once, and SIGTERM passed on to the app."""

    def init_process(self):
        """gunicorn writes every error answer through `util.write_error` and builds every
        response with `wsgi.Response` (looked up when each request starts); this worker's
        process uses the JSON writer and `OneSendResponse` instead, and leaves the response
        in the environ (`environ_with_response`). Its settings, complete by now, are read
        from a `SettledConfig`."""
        util.write_error = write_json_error
        wsgi.Response = OneSendResponse
        wsgi.create = environ_with_response(wsgi.create)
        self.cfg = SettledConfig(self.cfg)
        super().init_process()

    def handle_exit(self, sig, frame):
        """SIGTERM: gunicorn's graceful stop, and the app's streams told how long they have."""
        super().handle_exit(sig, frame)
        # A worker still loading the app (SIGTERM right after start) has no `wsgi` yet.
        shutdown = getattr(getattr(self, "wsgi", None), "extensions", {}).get("shutdown")
        if shutdown is not None:
            shutdown.begin(self.cfg.graceful_timeout)


def gevent_worker(max_connections_per_ip: int):
    """gunicorn's gevent worker with the service's additions and this per-address cap (0: none)."""
    from gunicorn.workers.ggevent import GeventWorker

    class ServiceGeventWorker(_ServiceWorkerMixin, GeventWorker):
        """gunicorn's gevent worker, with JSON errors, a per-address connection cap and
        in-band stream endings on SIGTERM."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.open_per_ip: Counter[str] = Counter()

        def handle(self, listener, client, addr):
            """Serves one connection unless its address already holds the most allowed.
            (One greenlet at a time runs here, so the counter needs no lock.)"""
            ip = addr[0] if isinstance(addr, tuple) else ""
            if max_connections_per_ip and self.open_per_ip[ip] >= max_connections_per_ip:
                self._refuse(client)
                return
            self.open_per_ip[ip] += 1
            try:
                super().handle(listener, client, addr)
            finally:
                self.open_per_ip[ip] -= 1
                if not self.open_per_ip[ip]:
                    del self.open_per_ip[ip]

        @staticmethod
        def _refuse(client) -> None:
            try:
                client.sendall(json_error(429, "Too Many Requests", (("Retry-After", "1"),)))
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                util.close(client)

    return ServiceGeventWorker


def thread_worker():
    """gunicorn's gthread worker with JSON errors and in-band stream endings on SIGTERM (no
    per-address cap: its threads bound it; put nginx in front)."""
    from gunicorn.workers.gthread import ThreadWorker

    class ServiceThreadWorker(_ServiceWorkerMixin, ThreadWorker):
        """gunicorn's gthread worker with JSON errors and in-band stream endings on SIGTERM."""

    return ServiceThreadWorker
