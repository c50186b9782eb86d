"""moonshot/response_headers.py: the upstream's response headers, read without the email
package, come out as the `HTTPMessage` http.client's own `parse_headers` builds, for ordinary,
odd and malformed header blocks alike; and the client's connections use that reader."""
from __future__ import annotations

import http.client
import io
import random

import pytest
import urllib3

from kimi_backend.moonshot import response_headers
from kimi_backend.moonshot.opening import LeanHTTPConnection, LeanHTTPSConnection
from kimi_backend.moonshot.response_headers import LeanHTTPResponse, parse_header_lines
from tests.conftest import UPSTREAM_KEY

BLOCKS = [
    b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 400\r\n"
    b"Msh-Request-Id: 7c2413e5-1929-4383-a438-df7ce17a1291\r\nDate: Thu, 03 Dec 2026 21:21:37 GMT\r\n\r\n",
    b"\r\n",  # no headers at all
    b"A: b\n\n",  # bare LF line endings
    b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nSet-Cookie: c=3\r\n\r\n",  # repeated, in order
    b"X-Empty:\r\nX-Blank:   \r\nX-Tabs:\t\t v \t\r\n\r\n",  # empty values, blanks kept at the end
    b"X-Colons: a:b::c\r\nX-Latin: caf\xe9 \xff\r\n\r\n",  # colons in the value, Latin-1 bytes
    b"X-Fold: first\r\n  second\r\n\tthird\r\nAfter: x\r\n\r\n",  # continuation lines
    b"  Leading: continuation first\r\nA: b\r\n\r\n",
    b"X-CR: a\rb\r\nA: b\r\n\r\n",  # a bare CR inside a value
    b": no name\r\nA: b\r\n\r\n",
    b"No colon here\r\nA: b\r\n\r\n",
    b"From someone@example.com Thu Dec  3 2026\r\nA: b\r\n\r\n",  # a unix-from line
    b"Bad Name: x\r\nA: b\r\n\r\n",  # a space in the name
    b"A: b\r\nB: c\r\n",  # cut off before the blank line
    b"",
]


def lines_of(block: bytes) -> list[bytes]:
    """The header lines as http.client reads them from a response."""
    return http.client._read_headers(io.BytesIO(block))


def as_built_by_email(block: bytes) -> http.client.HTTPMessage:
    return http.client.parse_headers(io.BytesIO(block))


def state(message: http.client.HTTPMessage) -> dict:
    """Everything a message holds (its defects compared by kind and text)."""
    values = dict(vars(message))
    values["defects"] = [(type(d).__name__, str(d)) for d in message.defects]
    values["items"] = message.items()
    return values


@pytest.mark.parametrize("block", BLOCKS)
def test_each_header_block_gives_what_the_email_parser_gives(block):
    ours = response_headers.parse_headers(io.BytesIO(block))
    assert state(ours) == state(as_built_by_email(block))


def test_plain_blocks_take_the_fast_path_and_odd_ones_the_email_parser(monkeypatch):
    used = []
    real = response_headers._by_email_parser
    monkeypatch.setattr(response_headers, "_by_email_parser", lambda *args: used.append(1) or real(*args))
    parse_header_lines(lines_of(BLOCKS[0]))
    assert not used
    parse_header_lines(lines_of(b"X-Fold: first\r\n second\r\n\r\n"))
    assert used


def test_random_header_blocks_give_what_the_email_parser_gives():
    rng = random.Random(20261203)
    alphabet = b"Aa-_:; \t\r\n\xe9\x00=,"
    for _ in range(3000):
        lines = []
        for _ in range(rng.randint(0, 5)):
            if rng.random() < 0.8:
                name = bytes(rng.choice(b"AbXyz-_0!~") for _ in range(rng.randint(1, 8)))
                value = bytes(rng.choice(b"abc :;/\t,=") for _ in range(rng.randint(0, 12)))
                lines.append(name + b":" + value + rng.choice([b"\r\n", b"\n"]))
            else:
                lines.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) + b"\r\n")
        block = b"".join(lines) + rng.choice([b"\r\n", b"\n", b""])
        ours = response_headers.parse_headers(io.BytesIO(block))
        assert state(ours) == state(as_built_by_email(block)), block


def test_begin_is_http_clients_own_with_the_lean_reader():
    assert LeanHTTPResponse.begin.__code__ is http.client.HTTPResponse.begin.__code__
    assert LeanHTTPResponse.begin.__globals__["parse_headers"] is response_headers.parse_headers
    assert LeanHTTPConnection.response_class is LeanHTTPResponse
    assert LeanHTTPSConnection.response_class is LeanHTTPResponse


def test_the_clients_upstream_answers_are_read_by_the_lean_reader(simulator_url, monkeypatch):
    # Through the real client and a real upstream: the headers reach urllib3 (and `requests`) as before.
    from kimi_backend.moonshot.client import MoonshotClient
    from kimi_backend.moonshot.reading import ReplyLimits

    parsed = []
    real = response_headers.parse_headers
    monkeypatch.setitem(LeanHTTPResponse.begin.__globals__, "parse_headers",
                        lambda fp: parsed.append(1) or real(fp))
    client = MoonshotClient(simulator_url, UPSTREAM_KEY, connect_timeout_s=5, read_timeout_s=30,
                            completion_timeout_s=60, max_retries=0, retry_backoff_s=0, retry_max_wait_s=0,
                            pool_size=2, limits=ReplyLimits(1 << 20, 1 << 20))
    reply = client.chat({"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}]})
    assert reply and parsed
    stream = client.open_stream({"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}]})
    try:
        assert stream._response.headers["Content-Type"].startswith("text/event-stream")
        assert isinstance(stream._response, urllib3.BaseHTTPResponse)  # urllib3's answer itself, no wrapper
    finally:
        stream.close()
    assert len(parsed) == 2
