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


def test_a_whole_chunk_is_read_in_one_step_as_the_general_reading_reads_it():
    pieces = [b"data: one\n\n", b"x" * 300, "\u00e9t\u00e9".encode()]
    quick, general = ChunkedBody(), ChunkedBody()
    for piece in pieces:
        block = b"%X\r\n%s\r\n" % (len(piece), piece)
        assert quick.whole_chunk(block) == piece
        assert quick.decode(block) == piece == decode_in_pieces(general, block, [1, 3])
    assert quick.decode(b"0\r\n\r\n") == b"" and quick.done


@pytest.mark.parametrize("block", [
    b"0\r\n\r\n",  # the last chunk: its trailers follow
    b"3;ext=1\r\nabc\r\n",  # an extension
    b" 3\r\nabc\r\n", b"0x3\r\nabc\r\n", b"+3\r\nabc\r\n", b"3_\r\nabc\r\n",  # not plain hex (int() would take some)
    b"3\nabc\r\n",  # a size line without CR
    b"3\r\nab\r\n", b"3\r\nabcd\r\n", b"3\r\nabc\r\n4\r\n",  # shorter, longer, or more than one chunk
    b"3\r\nabcXY",  # data not followed by CRLF
])
def test_anything_but_one_whole_plain_chunk_is_left_to_the_general_reading(block):
    assert ChunkedBody().whole_chunk(block) is None


def test_a_whole_chunk_is_only_read_so_at_a_chunk_boundary():
    body = ChunkedBody()
    assert body.decode(b"5\r\nab") == b"ab"  # three bytes of this chunk still to come
    assert body.whole_chunk(b"3\r\nabc\r\n") is None
    assert body.decode(b"cde\r\n") == b"cde"
    assert body.whole_chunk(b"3\r\nabc\r\n") == b"abc"
