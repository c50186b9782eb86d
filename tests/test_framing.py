"""moonshot/framing.py: the upstream's body framing decoded off the raw socket, whatever the
block boundaries, and a broken framing refused."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from kimi_backend.moonshot.framing import BrokenFraming, ChunkedBody, CloseDelimitedBody, LengthBody

BODY = b"data: one\n\ndata: two\n\n" + "data: \u00e9t\u00e9\n\n".encode()
CHUNKED = b"9\r\ndata: one\r\n4;ext=1\r\n\n\nda\r\n" + (f"{len(BODY) - 13:x}\r\n").encode() + BODY[13:] + b"\r\n0\r\nX-Trailer: yes\r\n\r\n"


def decode_in_pieces(framing, raw: bytes, cuts: list[int]) -> bytes:
    out = b""
    start = 0
    for cut in sorted(set(cuts)) + [len(raw)]:
        out += framing.decode(raw[start:cut])
        start = cut
    return out


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=12))
def test_chunked_body_is_the_same_however_the_blocks_fall(cuts):
    body = ChunkedBody()
    assert decode_in_pieces(body, CHUNKED, cuts) == BODY
    assert body.done and not body.extra


def test_chunked_body_not_done_before_its_last_chunk_and_trailers():
    body = ChunkedBody()
    assert body.decode(CHUNKED[:-2]) == BODY
    assert not body.done
    assert body.decode(b"\r\n") == b""
    assert body.done


def test_bytes_after_the_last_chunk_mark_the_connection_unusable():
    body = ChunkedBody()
    body.decode(b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1")
    assert body.done and body.extra


@pytest.mark.parametrize("raw", [b"zz\r\n", b"-2\r\nhi\r\n", b"0x2\r\nhi\r\n", b"\r\n", b"1_0\r\n",
                                 b"2\r\nhiXX", b"9" * 5000])
def test_broken_chunked_framing_is_refused(raw):
    with pytest.raises(BrokenFraming):
        ChunkedBody().decode(raw)


def test_content_length_body_ends_at_its_length():
    body = LengthBody(5)
    assert body.decode(b"abc") == b"abc" and not body.done
    assert body.decode(b"deXYZ") == b"de" and body.done and body.extra


def test_close_delimited_body_is_every_byte():
    body = CloseDelimitedBody()
    assert body.decode(b"abc") == b"abc" and not body.done
