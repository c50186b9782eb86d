"""An HTTP/1.1 response body read off the raw socket, block by block: the chunked transfer
coding decoded over whole blocks, or a body delimited by Content-Length or by the close.

http.client decodes chunked bodies one chunk at a time, reading each size line with its own
`readline`; relaying a stream, that was two fifths of the CPU spent per chunk. Here one
`recv` may carry many chunks, and a block's data comes out as one `bytes`."""
from __future__ import annotations

# A chunk-size line (with any extensions) or a trailer line longer than this is not HTTP.
MAX_FRAMING_LINE = 4096
_HEX = frozenset(b"0123456789abcdefABCDEF")


class BrokenFraming(ValueError):
    """The body's framing is not HTTP/1.1 (a chunk size that is not hex, a chunk's data not
    followed by CRLF, a framing line that never ends)."""


class ChunkedBody:
    """`Transfer-Encoding: chunked`: `decode(block)` returns the data in a block of the raw
    body; `done` once the last chunk and its trailers have been read."""

    def __init__(self) -> None:
        self.done = False
        self.extra = False  # bytes after the end: the connection is not in a reusable state
        self._left = 0  # data bytes of the current chunk still to come
        self._crlf = b""  # what is still to come of the CRLF that ends the current chunk's data
        self._line = b""  # a size or trailer line split across blocks
        self._trailers = False  # past the last chunk, reading trailer lines up to the empty one

    def whole_chunk(self, block: bytes) -> bytes | None:
        """The data of `block` when it is exactly one whole chunk that is not the last (a size
        in plain hex, no extension) and the body is at a chunk boundary: the usual block when
        relaying a stream, read without `decode`'s loop, and with the same result.
        None for any other block; the body's state is not changed either way."""
        if self._left or self._crlf or self._line or self._trailers or self.done:
            return None
        newline = block.find(b"\n")
        if 0 < newline <= MAX_FRAMING_LINE and block[newline - 1] == 13:  # CR
            size = block[:newline - 1]
            if size and _HEX.issuperset(size):
                end = newline + 1 + int(size, 16)
                if end > newline + 1 and len(block) == end + 2 and block.endswith(b"\r\n"):
                    return block[newline + 1:end]
        return None

    def decode(self, block: bytes) -> bytes:
        """The chunk data in `block`; raises BrokenFraming."""
        data = self.whole_chunk(block)
        if data is not None:
            return data
        pieces = []
        pos, end = 0, len(block)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                pieces.append(block[pos:pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._crlf = b"\r\n"
            elif self._crlf:
                take = min(len(self._crlf), end - pos)
                if block[pos:pos + take] != self._crlf[:take]:
                    raise BrokenFraming("a chunk's data is not followed by CRLF")
                pos += take
                self._crlf = self._crlf[take:]
            elif self.done:
                self.extra = True
                break
            else:
                newline = block.find(b"\n", pos)
                if newline < 0:
                    self._line += block[pos:]
                    if len(self._line) > MAX_FRAMING_LINE:
                        raise BrokenFraming("a chunk-size line that does not end")
                    break
                line = self._line + block[pos:newline]
                self._line = b""
                pos = newline + 1
                self._framing_line(line.rstrip(b"\r"))
                after = pos + self._left
                if self._left and block[after:after + 2] == b"\r\n":
                    # The whole chunk is in this block (the usual case): take it in one step.
                    pieces.append(block[pos:after])
                    pos = after + 2
                    self._left = 0
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def _framing_line(self, line: bytes) -> None:
        if len(line) > MAX_FRAMING_LINE:
            raise BrokenFraming("a chunk-size line that does not end")
        if self._trailers:
            self.done = not line  # trailers end at the empty line; their fields are ignored
            return
        size = line.split(b";", 1)[0].strip()
        if not size or not _HEX.issuperset(size):
            raise BrokenFraming("a chunk size that is not hexadecimal")
        self._left = int(size, 16)
        self._trailers = not self._left


class LengthBody:
    """A body of `Content-Length` bytes."""

    def __init__(self, length: int) -> None:
        self._left = length
        self.done = not length
        self.extra = False

    def decode(self, block: bytes) -> bytes:
        """The part of `block` that belongs to the body."""
        if len(block) > self._left:
            self.extra = True
            block = block[:self._left]
        self._left -= len(block)
        self.done = not self._left
        return block


class CloseDelimitedBody:
    """A body that ends when the upstream closes the connection (HTTP/1.0 style)."""

    done = False
    extra = False

    def decode(self, block: bytes) -> bytes:
        """All of `block`."""
        return block
