"""kimi_backend/workers.py's OneSendResponse: the head and the first body bytes leave in one
send, and the bytes on the wire are exactly what gunicorn's own Response writes, for every
way a response can end (a sized body, a chunked stream, HEAD, 204, a body past its
Content-Length, sendfile, an error before any body)."""
from __future__ import annotations

import tempfile
from types import SimpleNamespace

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi

from kimi_backend.workers import RESPONSE_KEY, OneSendResponse, _ServiceWorkerMixin, environ_with_response, send_all


class RecordingSocket:
    """Keeps each sendall (and sendfile) as one entry, in order."""

    def __init__(self):
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> None:
        file.seek(offset)
        self.sends.append(file.read(count))


def request(method: str = "GET", version: tuple[int, int] = (1, 1)):
    return SimpleNamespace(method=method, version=version, should_close=lambda: False)


CONFIG = SimpleNamespace(sendfile=True, is_ssl=False, protocol="http")


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch):
    """Both writers stamp the same Date, so their bytes can be compared."""
    monkeypatch.setattr(util, "http_date", lambda: "Thu, 03 Dec 2026 09:00:00 GMT")


def play(response_class, method, status, headers, writes, version=(1, 1)):
    """Runs one response the way gunicorn's workers do (start_response, each write, close);
    returns the sends its socket saw."""
    sock = RecordingSocket()
    response = response_class(request(method, version), sock, CONFIG)
    response.start_response(status, headers)
    for data in writes:
        response.write(data)
    response.close()
    return sock.sends


CASES = {
    "a sized JSON body": ("POST", "200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")],
                          [b'{"ok":true}']),
    "a chunked stream": ("POST", "200 OK", [("Content-Type", "text/event-stream")],
                         [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]),
    "an empty first block of a stream": ("POST", "200 OK", [("Content-Type", "text/event-stream")],
                                         [b"", b"data: 1\n\n"]),
    "HEAD": ("HEAD", "200 OK", [("Content-Length", "5")], [b"hello"]),
    "204": ("DELETE", "204 No Content", [], [b""]),
    "a body longer than its Content-Length": ("GET", "200 OK", [("Content-Length", "3")], [b"abcdef", b"gh"]),
    "no body at all": ("GET", "200 OK", [("Content-Length", "0")], []),
    "HTTP/1.0": ("GET", "200 OK", [], [b"old"]),
}


@pytest.mark.parametrize("case", CASES)
def test_the_bytes_on_the_wire_are_gunicorns_own(case):
    method, status, headers, writes = CASES[case]
    version = (1, 0) if case == "HTTP/1.0" else (1, 1)
    ours = play(OneSendResponse, method, status, headers, writes, version)
    theirs = play(wsgi.Response, method, status, headers, writes, version)
    assert b"".join(ours) == b"".join(theirs)
    assert ours[0].startswith(b"HTTP/1.")


def test_a_sized_body_leaves_with_its_head_in_one_send():
    sends = play(OneSendResponse, *CASES["a sized JSON body"])
    assert len(sends) == 1 and sends[0].endswith(b'\r\n\r\n{"ok":true}')
    assert len(play(wsgi.Response, *CASES["a sized JSON body"])) == 2  # what this saves


def test_a_stream_sends_its_head_with_the_first_event_then_one_send_per_event():
    sends = play(OneSendResponse, *CASES["a chunked stream"])
    assert len(sends) == 4  # head + first event, two more events, the last chunk
    assert sends[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert sends[-1] == b"0\r\n\r\n"


def test_a_response_without_body_bytes_still_sends_its_head():
    for case in ("HEAD", "204", "no body at all"):
        sends = play(OneSendResponse, *CASES[case])
        assert sends and sends[0].startswith(b"HTTP/1.1 ") and sends[0].endswith(b"\r\n\r\n"), case


def test_a_write_that_fails_still_sends_the_head_first():
    """A non-bytes block is gunicorn's TypeError, after the head went out (as before)."""
    sock = RecordingSocket()
    response = OneSendResponse(request(), sock, CONFIG)
    response.start_response("200 OK", [("Content-Type", "text/plain")])
    with pytest.raises(TypeError):
        response.write("not bytes")
    assert len(sock.sends) == 1 and sock.sends[0].endswith(b"\r\n\r\n")
    response.write(b"after")
    assert sock.sends[1] == b"5\r\nafter\r\n"


def test_sendfile_sends_its_head_alone_then_the_file():
    with tempfile.TemporaryFile() as file:
        file.write(b"static bytes")
        file.seek(0)
        sock = RecordingSocket()
        response = OneSendResponse(request(), sock, CONFIG)
        response.start_response("200 OK", [("Content-Length", "12")])
        response.write_file(SimpleNamespace(filelike=file))
        response.close()
    assert len(sock.sends) == 2 and sock.sends[0].endswith(b"\r\n\r\n") and sock.sends[1] == b"static bytes"


def test_the_service_workers_build_their_responses_with_it(monkeypatch):
    """The worker mixin installs it where gunicorn's workers look their Response class up."""
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)
    monkeypatch.setattr(wsgi, "create", wsgi.create)
    monkeypatch.setattr(util, "write_error", util.write_error)

    class Base:
        def init_process(self):
            self.started = True

    class Worker(_ServiceWorkerMixin, Base):
        cfg = Config()

    worker = Worker()
    worker.init_process()
    assert worker.started and wsgi.Response is OneSendResponse
    assert wsgi.create.__name__ == "create_keeping_response"  # see below


def test_the_response_is_left_in_the_environ_only_when_it_is_ours():
    """For a stream relayed from the event loop (hub_relay.py); gunicorn's HTTP/2 passes its
    own response class, whose bytes are not ours to frame."""
    def create(response_class=OneSendResponse):
        return response_class(request(), RecordingSocket(), CONFIG), {"REQUEST_METHOD": "POST"}

    class Other(wsgi.Response):
        pass
    response, environ = environ_with_response(create)()
    assert environ[RESPONSE_KEY] is response
    response, environ = environ_with_response(create)(response_class=Other)
    assert environ == {"REQUEST_METHOD": "POST"}


def gevent_pair():
    from gevent import socket as gsocket
    return gsocket.socketpair()


def test_a_gevent_socket_takes_a_block_in_one_os_send_without_gevents_sendall(monkeypatch):
    from gevent import socket as gsocket
    ours, peer = gevent_pair()
    calls = []
    monkeypatch.setattr(type(ours), "sendall", lambda self, data, flags=0: calls.append(bytes(data)))
    try:
        send_all(ours, b"9\r\ndata: 1\n\n\r\n")
        assert calls == []  # the OS socket took it all
        assert peer._sock.recv(100) == b"9\r\ndata: 1\n\n\r\n"
    finally:
        ours.close()
        peer.close()
    assert type(ours) is gsocket.socket


def test_what_the_kernel_cannot_take_at_once_goes_through_gevents_sendall_in_order():
    import gevent
    ours, peer = gevent_pair()
    data = bytes(range(256)) * 40_000  # 10 MB: more than a socket pair's buffers hold
    received = bytearray()

    def read():
        while len(received) < len(data):
            block = peer.recv(1 << 20)
            if not block:
                return
            received.extend(block)

    reader = gevent.spawn(read)
    try:
        send_all(ours, data)
        reader.join(timeout=30)
        assert bytes(received) == data
    finally:
        reader.kill()
        ours.close()
        peer.close()


class Name(str):
    """A header name that is a str, but not exactly one."""


HEADER_CASES = {
    "ordinary": [("Content-Type", "application/json"), ("X-Request-ID", "abc"), ("X-Frame-Options", "DENY")],
    "values trimmed of spaces and tabs": [("X-Trim", " \tpadded value\t "), ("X-Empty", "")],
    "Content-Length read": [("Content-Length", "11"), ("content-length", " 12 ")],
    "hop-by-hop headers dropped": [("Connection", "close"), ("Keep-Alive", "timeout=5"),
                                   ("Transfer-Encoding", "chunked"), ("X-After", "kept")],
    "an upgrade to websocket": [("Connection", "Upgrade"), ("Upgrade", "websocket")],
    "an upgrade to anything else": [("connection", "upgrade"), ("upgrade", "h2c")],
    "a name in another case": [("x-request-id", "1"), ("X-REQUEST-ID", "2")],
    "a str subclass as name": [(Name("X-Subclass"), "v")],
    "an invalid name": [("X-Good", "1"), ("Bad Name", "v")],
    "a name with a colon": [("X:Y", "v")],
    "a name that is bytes": [(b"X-Bytes", "v")],
    "a value with a newline": [("X-Request-ID", "a\r\nInjected: 1")],
    "a value with a control character": [("Content-Type", "text/plain\x00")],
    "a value that is not a str": [("X-Count", 3)],
    "a header that is not a pair": [("X-Three", "a", "b")],
}


def processed(response_class, headers):
    """What the response keeps of `headers`, or the exception it raises."""
    response = response_class(request(), RecordingSocket(), CONFIG)
    try:
        response.process_headers(headers)
    except Exception as exc:  # the same refusals are the point
        return type(exc), str(exc)
    return response.headers, response.response_length, response.upgrade


@pytest.mark.parametrize("case", HEADER_CASES)
def test_headers_are_processed_as_gunicorn_does_also_once_their_names_are_known(case, monkeypatch):
    monkeypatch.setattr(OneSendResponse, "_name_kinds", {})
    headers = HEADER_CASES[case]
    theirs = processed(wsgi.Response, headers)
    assert processed(OneSendResponse, headers) == theirs  # names new
    assert processed(OneSendResponse, headers) == theirs  # names known
    # Known from other responses, in every order.
    for other in HEADER_CASES.values():
        processed(OneSendResponse, other)
    assert processed(OneSendResponse, headers) == theirs
    assert processed(OneSendResponse, headers[::-1]) == processed(wsgi.Response, headers[::-1])


def test_a_known_ordinary_name_skips_gunicorns_checks(monkeypatch):
    monkeypatch.setattr(OneSendResponse, "_name_kinds", {})
    headers = [("Content-Type", "application/json"), ("X-Request-ID", "abc"), ("Content-Length", "2")]
    processed(OneSendResponse, headers)
    seen = []
    original = wsgi.Response.process_headers
    monkeypatch.setattr(wsgi.Response, "process_headers", lambda self, some: seen.extend(some) or original(self, some))
    assert processed(OneSendResponse, headers) == ([("Content-Type", "application/json"), ("X-Request-ID", "abc"),
                                                    ("Content-Length", "2")], 2, False)
    assert seen == [("Content-Length", "2")]  # only the special one went through gunicorn's code


def test_names_past_the_limit_are_not_remembered(monkeypatch):
    monkeypatch.setattr(OneSendResponse, "_name_kinds", {})
    many = [(f"X-Name-{i}", "v") for i in range(300)]
    assert processed(OneSendResponse, many) == processed(wsgi.Response, many)
    assert len(OneSendResponse._name_kinds) == 256
