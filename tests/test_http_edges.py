"""The edges of HTTP under the real gunicorn (kimi_backend/workers.py, intake.py): malformed
requests answered in the JSON contract, bodies bounded in size and time, connections bounded
per client address."""
from __future__ import annotations

import json
import select
import socket
import time

import pytest
import requests

from tests.helpers import wait_until
from tests.servers import Service

# (what is wrong, raw request, the status gunicorn's parser or our intake gives it)
MALFORMED = [
    ("non-numeric Content-Length", b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    ("negative Content-Length", b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("duplicate Content-Length", b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                 b"Content-Length: 3\r\n\r\n{}", 400),
    ("Content-Length with Transfer-Encoding", b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("unknown Transfer-Encoding", b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("bare LF inside a header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n", 400),
    ("bare CR inside a header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("NUL in a header value", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("NUL in a header name", b"GET /health HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", 400),
    ("space before the colon", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400),
    ("obsolete line folding", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b\r\n  c\r\n\r\n", 400),
    ("oversized URI", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("oversized header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ("too many headers", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(120)) + b"\r\n", 431),
    ("lowercase method", b"get /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("invalid method characters", b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("unknown Expect", b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417),
    ("unknown HTTP version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ("TLS handshake on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("LF-only line endings", b"GET /health HTTP/1.1\nHost: x\n\n", 400),
    ("malformed chunk size", b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
]


def exchange(port: int, raw: bytes, timeout: float = 5) -> tuple[bytes, float]:
    """Sends raw bytes on a new connection; returns everything received until the server
    closes it (or the timeout), and how long that took."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = b""
    try:
        sock.sendall(raw)
        while block := sock.recv(65536):
            received += block
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        sock.close()
    return received, time.monotonic() - started


def parse_response(raw: bytes) -> tuple[int, dict[str, str], dict]:
    """Status, headers (lower-cased names) and JSON body of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


@pytest.fixture(scope="module")
def service():
    # One worker: the per-address connection cap is counted per worker process.
    svc = Service(KIMI_OFFLINE="1", REQUEST_BODY_TIMEOUT_S="1", MAX_BODY_BYTES="2048", MAX_CONNECTIONS_PER_IP="20",
                  RATE_LIMIT_MAX_REQUESTS="100000", WEB_CONCURRENCY="1")
    yield svc
    svc.stop()


@pytest.mark.parametrize("what,raw,status", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_http_gets_the_json_contract(service, what, raw, status):
    received, _ = exchange(service.port, raw)
    got, headers, body = parse_response(received)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert body["success"] is False and body["code"] and body["error"]
    assert body["request_id"] == headers["x-request-id"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert b"<html" not in received.lower()


def test_malformed_http_writes_an_access_line(service):
    received, _ = exchange(service.port, b"get /health HTTP/1.1\r\nHost: x\r\n\r\n")
    request_id = parse_response(received)[1]["x-request-id"]

    def logged():
        for line in service.log().splitlines():
            if request_id in line:
                return json.loads(line)
        return None
    line = wait_until(logged, timeout=5, message="the access line")
    assert line["logger"] == "kimi_backend.access" and line["status"] == 400 and line["outcome"] == "bad_request"


def test_a_body_that_never_arrives_is_408_within_the_timeout(service):
    raw = (b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 100\r\n\r\n{\"mess")
    received, took = exchange(service.port, raw)
    status, _, body = parse_response(received)
    assert (status, body["code"]) == (408, "request_timeout")
    assert took < 3, "REQUEST_BODY_TIMEOUT_S=1 bounds the whole body, and the connection is closed after"


def test_a_body_dripping_slowly_is_408_within_the_timeout(service):
    """A byte every 0.2 s never trips a per-read timeout; the deadline is for the whole body."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    started = time.monotonic()
    sock.sendall(b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    received = b""
    try:
        for _ in range(50):  # 10 s of dripping at most
            sock.sendall(b" ")
            if select.select([sock], [], [], 0.2)[0]:
                break
        while block := sock.recv(65536):
            received += block
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    status, _, body = parse_response(received)
    assert (status, body["code"]) == (408, "request_timeout")
    assert time.monotonic() - started < 3


def test_a_chunked_body_over_the_limit_is_413(service):
    chunk = b"x" * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    received, _ = exchange(service.port, b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
    status, _, reply = parse_response(received)
    assert (status, reply["code"]) == (413, "payload_too_large")
    assert "2048" in reply["error"]


def test_a_chunked_body_within_the_limit_is_served(service):
    small = json.dumps({"message": "hi"}).encode()
    received, _ = exchange(service.port, b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
    status, _, reply = parse_response(received)
    assert status == 200 and reply["data"]["message"].startswith("[offline simulator]")


def test_connections_per_address_are_capped_and_others_still_served(service):
    """20 idle connections from one address take its whole allowance (MAX_CONNECTIONS_PER_IP=20):
    the 21st is refused with a JSON 429, while /health still answers once one is closed."""
    held = [socket.create_connection(("127.0.0.1", service.port), timeout=5) for _ in range(20)]
    try:
        def refused():
            received, _ = exchange(service.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2)
            return received if received.startswith(b"HTTP/1.1 429") else None
        received = wait_until(refused, timeout=5, message="the 21st connection to be refused")
        status, headers, body = parse_response(received)
        assert (status, body["code"], headers["retry-after"]) == (429, "too_many_connections", "1")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: requests.get(service.url + "/health", timeout=2).status_code == 200, timeout=5,
               message="the address's connections to be free again")


def test_no_cap_behind_a_trusted_proxy():
    """Behind nginx every connection comes from nginx's address: the cap would cap everyone."""
    svc = Service(KIMI_OFFLINE="1", MAX_CONNECTIONS_PER_IP="2", TRUSTED_PROXY_COUNT="1")
    held = [socket.create_connection(("127.0.0.1", svc.port), timeout=5) for _ in range(5)]
    try:
        assert requests.get(svc.url + "/health", timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()
        svc.stop()


def test_a_body_that_never_arrives_is_408_under_the_gthread_worker_too():
    """gthread has no gevent.Timeout: a timer thread ends the read instead."""
    svc = Service(KIMI_OFFLINE="1", REQUEST_BODY_TIMEOUT_S="1", WORKER_CLASS="gthread", GUNICORN_THREADS="4")
    try:
        raw = (b"POST /api/chat/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 100\r\n\r\n{\"mess")
        received, took = exchange(svc.port, raw)
        status, _, body = parse_response(received)
        assert (status, body["code"]) == (408, "request_timeout")
        assert took < 3
        received, _ = exchange(svc.port, b"get /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert parse_response(received)[2]["code"] == "bad_request", "JSON for malformed HTTP under gthread too"
        assert requests.get(svc.url + "/health", timeout=5).status_code == 200
    finally:
        svc.stop()



def test_sync_forms_are_remembered_and_coroutines_still_converted(make_app):
    """KimiFlask remembers each function's sync form; a coroutine function still goes through
    Flask's own conversion every time (here it needs asgiref, not installed, so Flask refuses)."""
    app = make_app()

    async def probe():
        return {}

    for _ in range(2):
        with pytest.raises(RuntimeError, match="async"):
            app.ensure_sync(probe)
    assert app.ensure_sync(len) is len and app.ensure_sync(len) is len
