"""moonshot/exchange.py: the request goes out as exactly the bytes it should, in one send; an
answer's head is read however it is split and whatever an upstream may send in it; a
non-streamed body is read in every framing; a connection goes back to the pool open only
after a whole body; a plain-HTTP proxy gets the absolute URL and its credentials, an HTTPS
upstream behind a proxy a CONNECT. The upstream here is a raw socket server."""
from __future__ import annotations

import base64
import json
import socket

import pytest
from urllib3.exceptions import ProtocolError

from kimi_backend.moonshot.exchange import MAX_HEAD_BYTES, body_framing, parse_head, read_head
from kimi_backend.moonshot.framing import ChunkedBody, CloseDelimitedBody, LengthBody
from tests.helpers import RawUpstream

REPLY = {"id": "c1", "object": "chat.completion", "model": "kimi-k2.6",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
REPLY_BYTES = json.dumps(REPLY).encode()


def sized(body: bytes = REPLY_BYTES, *extra: str) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + "".join(f"{line}\r\n" for line in extra)
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def chunked(body: bytes = REPLY_BYTES, size: int = 7) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n")


class KeepAliveUpstream(RawUpstream):
    """Reads requests on each connection it accepts and answers each with the next of
    `answers` (bytes, sent in pieces of `piece` bytes), keeping the connection open unless
    told to close after it; records every request's raw bytes and counts connections."""

    def __init__(self, answers: list[bytes], piece: int = 0, close_after: bool = False):
        self.answers, self.piece, self.close_after = list(answers), piece, close_after
        self.requests: list[bytes] = []
        self.connections = 0
        super().__init__()

    def accepted(self) -> None:
        self.connections += 1

    def answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while self.answers:
                while b"\r\n\r\n" not in data:
                    block = conn.recv(65536)
                    if not block:
                        return
                    data += block
                head, data = data.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(data) < length:
                    data += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + data[:length])
                data = data[length:]
                answer = self.answers.pop(0)
                step = self.piece or len(answer) or 1
                for i in range(0, len(answer), step):
                    conn.sendall(answer[i:i + step])
                if self.close_after:
                    return


@pytest.fixture
def upstream():
    started = []

    def start(answers: list[bytes], **options) -> KeepAliveUpstream:
        started.append(KeepAliveUpstream(answers, **options))
        return started[-1]
    yield start
    for server in started:
        server.close()


def ask(make_app, base_url: str, times: int = 1, **settings) -> list:
    app = make_app(KIMI_BASE_URL=base_url, UPSTREAM_MAX_RETRIES="0", UPSTREAM_READ_TIMEOUT_S="2", **settings)
    client = app.test_client()
    return [client.post("/v1/chat/completions", json={"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}]})
            for _ in range(times)]


def test_the_request_is_these_bytes(make_app, upstream):
    server = upstream([sized()])
    [reply] = ask(make_app, server.base_url)
    assert reply.status_code == 200
    head, body = server.requests[0].split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert lines[1] == f"Host: 127.0.0.1:{server.port}"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Authorization"].startswith("Bearer ") and headers["Content-Type"] == "application/json"
    assert headers["Accept-Encoding"] == "identity" and int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["messages"] == [{"role": "user", "content": "hi"}]


def test_the_request_leaves_in_one_send(monkeypatch):
    """Head and body in one `sendall` (on loopback, or any fast link, each send is a packet both
    kernels process)."""
    from kimi_backend.moonshot import exchange as module

    sent = []

    class Recording:
        def __init__(self, sock):
            self.sock = sock

        def sendall(self, data):
            sent.append(bytes(data))
            self.sock.sendall(data)

        def __getattr__(self, name):
            return getattr(self.sock, name)

    server = KeepAliveUpstream([sized()])
    try:
        from urllib3 import HTTPConnectionPool
        pool = HTTPConnectionPool("127.0.0.1", server.port)
        target = module.Target(pool, "POST", "/v1/chat/completions", server.base_url, {"Content-Type": "application/json"})
        conn = target.connection(5)
        conn.sock = Recording(conn.sock)
        pool._put_conn(conn)
        answer = module.exchange(target, b'{"a": 1}', 5, 5)
        assert sent == [target.request_bytes(b'{"a": 1}')]
        assert sent[0].endswith(b"Content-Length: 8\r\n\r\n{\"a\": 1}")
        assert answer.status == 200 and answer.pending == REPLY_BYTES
    finally:
        server.close()


@pytest.mark.parametrize("answer", [sized(), chunked(size=1), chunked(size=5), chunked(size=100000),
                                    sized(REPLY_BYTES, "Connection: close")])
@pytest.mark.parametrize("piece", [0, 1, 13])
def test_a_reply_in_any_framing_split_anywhere(make_app, upstream, answer, piece):
    server = upstream([answer], piece=piece)
    [reply] = ask(make_app, server.base_url)
    assert reply.status_code == 200
    assert reply.get_json()["choices"][0]["message"]["content"] == "Hi there"


def test_a_close_delimited_reply(make_app, upstream):
    server = upstream([b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + REPLY_BYTES], close_after=True)
    [reply] = ask(make_app, server.base_url)
    assert reply.get_json()["choices"][0]["message"]["content"] == "Hi there"


def test_interim_answers_are_skipped(make_app, upstream):
    server = upstream([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + sized()])
    [reply] = ask(make_app, server.base_url)
    assert reply.get_json()["choices"][0]["message"]["content"] == "Hi there"


def test_a_whole_reply_leaves_its_connection_open_for_the_next(make_app, upstream):
    server = upstream([sized(), chunked(), sized()])
    replies = ask(make_app, server.base_url, times=3)
    assert [reply.status_code for reply in replies] == [200, 200, 200]
    assert server.connections == 1


def test_a_connection_the_upstream_closes_is_not_used_again(make_app, upstream):
    server = upstream([sized(REPLY_BYTES, "Connection: close"), sized()])
    server.close_after = True
    replies = ask(make_app, server.base_url, times=2)
    assert [reply.status_code for reply in replies] == [200, 200]
    assert server.connections == 2


def test_an_error_reply_is_read_and_its_connection_kept(make_app, upstream):
    error = json.dumps({"error": {"type": "rate_limit_reached_error", "message": "slow down"}}).encode()
    server = upstream([b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(error), error), sized()])
    first, second = ask(make_app, server.base_url, times=2)
    assert first.status_code == 429 and first.headers["Retry-After"] == "7"
    assert second.status_code == 200 and server.connections == 1


@pytest.mark.parametrize("answer,status,code", [
    (b"", 503, "upstream_unavailable"),  # closed without a word: as a stale pooled connection
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 503, "upstream_unavailable"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", 503, "upstream_unavailable"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + REPLY_BYTES, 502, "upstream_disconnected"),
    (chunked()[:-9], 502, "upstream_disconnected"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 502, "upstream_disconnected"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 503, "upstream_unavailable"),
])
def test_a_broken_answer_is_our_json_error(make_app, upstream, answer, status, code):
    server = upstream([answer], close_after=True)
    [reply] = ask(make_app, server.base_url)
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (status, code)


def test_an_http_proxy_gets_the_absolute_url_and_its_credentials(make_app, upstream):
    proxy = upstream([sized()])
    [reply] = ask(make_app, "http://upstream.example:8080/v1", UPSTREAM_PROXY=f"http://me:secret@127.0.0.1:{proxy.port}")
    assert reply.status_code == 200
    lines = proxy.requests[0].split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0] == "POST http://upstream.example:8080/v1/chat/completions HTTP/1.1"
    assert "Host: upstream.example:8080" in lines
    assert f"Proxy-Authorization: Basic {base64.b64encode(b'me:secret').decode()}" in lines


def test_an_https_upstream_is_reached_through_the_proxys_tunnel(make_app, upstream):
    proxy = upstream([b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"], close_after=True)
    [reply] = ask(make_app, "https://api.example/v1", UPSTREAM_PROXY=f"http://127.0.0.1:{proxy.port}")
    assert reply.status_code == 503
    assert proxy.requests[0].startswith(b"CONNECT api.example:443 HTTP/1.")


@pytest.mark.parametrize("head,status,headers,will_close", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", 200, {"content-length": "2"}, False),
    (b"HTTP/1.1 200 OK\nContent-Type: a\n\n", 200, {"content-type": "a"}, False),
    (b"HTTP/1.1 429 \r\nRetry-After: 3\r\nretry-after: 4\r\n\r\n", 429, {"retry-after": "3, 4"}, False),
    (b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\n\r\n", 200, {"x-a": "one two"}, False),
    (b"HTTP/1.1 200 OK\r\nnot a header\r\nX-B:  b \r\n\r\n", 200, {"x-b": "b"}, False),
    (b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n", 200, {"connection": "Close"}, True),
    (b"HTTP/1.0 200 OK\r\n\r\n", 200, {}, True),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", 200, {"connection": "keep-alive"}, False),
])
def test_heads_are_read_as_sent(head, status, headers, will_close):
    assert parse_head(head) == (status, headers, will_close)


@pytest.mark.parametrize("head", [b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n", b"ICY 200 OK\r\n\r\n",
                                  b"HTTP/1.1 099 Early\r\n\r\n"])
def test_a_status_line_that_is_not_http_fails(head):
    with pytest.raises(ProtocolError):
        parse_head(head)


@pytest.mark.parametrize("status,headers,framing", [
    (200, {"transfer-encoding": "chunked", "content-length": "5"}, ChunkedBody),
    (200, {"transfer-encoding": "gzip, chunked"}, ChunkedBody),
    (200, {"transfer-encoding": "gzip"}, CloseDelimitedBody),
    (200, {"content-length": "5, 5"}, LengthBody),
    (200, {}, CloseDelimitedBody),
    (204, {}, LengthBody),
    (304, {"content-length": "10"}, LengthBody),
])
def test_the_body_framing_follows_rfc_9112(status, headers, framing):
    found = body_framing(status, headers)
    assert type(found) is framing
    if status in (204, 304):
        assert found.done


@pytest.mark.parametrize("length", ["5, 6", "-1", "0x10", "", "5 5"])
def test_a_content_length_that_is_not_one_number_fails(length):
    with pytest.raises(ProtocolError):
        body_framing(200, {"content-length": length})


def test_the_head_is_read_however_it_is_split_and_only_one_block_beyond():
    """Byte by byte, the head is read whole; the body bytes that came in the block that
    completed it are handed on, and nothing more is read: the rest is left in the socket for
    the bounded reads (reading on while bytes were waiting once took in megabytes against an
    upstream sending one endless line, before any limit was checked)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5)
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        received = []
        real_recv = ours.recv

        class OneByte:
            def recv(self, size):
                block = real_recv(1 if len(received) < len(head) - 1 else size)
                received.append(block)
                return block

        first = b"a" * 3000
        theirs.sendall(head + first)
        status, headers, will_close, pending = read_head(OneByte())
        assert (status, headers, will_close, pending) == (200, {"transfer-encoding": "chunked"}, False, first)
        assert b"".join(received) == head + first and len(received) == len(head)
        later = b"b" * 50_000  # the upstream sends on; none of it is read with the head
        theirs.sendall(later)
        left = b""
        while len(left) < len(later):
            left += ours.recv(65536)
        assert left == later
