"""Reading the upstream's response headers without the `email` package.

http.client reads a response's status line and header lines itself, then hands the header
lines to `email.parser` (through its `parse_headers`) to build the `HTTPMessage` everyone
reads them from. That parser is general (MIME, continuation lines, defects) and slow: about
70 µs for the four header lines the upstream sends, against about 10 µs for splitting each
line at its colon, in one process side by side. Every upstream call pays it once.

`LeanHTTPResponse.begin` is http.client's own `begin` (the very code object, so whatever the
running Python does), resolving the name `parse_headers` to `parse_headers` below, which builds
the same `HTTPMessage` (same headers, values, order, payload, defects) when every header line is
a plain `Name: value`, and leaves anything else (continuation lines, a bare CR, a line with no
colon, a cut-off block) to the `email` parser as before. tests/test_response_headers.py compares
the two on ordinary, odd and malformed header blocks.
"""
from __future__ import annotations

import http.client
import re
import types

# A header line the email parser reads as exactly `Name: value`: a name of printable ASCII
# other than the colon, the colon, then a value with no CR or LF before the line's end.
# (The email parser splits at a bare CR too, and joins indented lines to the one before.)
_PLAIN_LINE = re.compile(r"([!-9;-~]+):([^\r\n]*)\r?\n\Z")


def parse_headers(fp, _class=http.client.HTTPMessage) -> http.client.HTTPMessage:
    """http.client's `parse_headers`: the header lines read from `fp`, as an `HTTPMessage`."""
    lines = http.client._read_headers(fp)
    return parse_header_lines(lines, _class)


def parse_header_lines(lines: list[bytes], _class=http.client.HTTPMessage) -> http.client.HTTPMessage:
    """The `HTTPMessage` for header lines as http.client reads them (each with its line ending,
    then the empty line that ends them), as the `email` parser would build it."""
    if not lines or lines[-1] not in (b"\r\n", b"\n"):
        return _by_email_parser(lines, _class)  # the block was cut off
    message = _class()
    for line in lines[:-1]:
        plain = _PLAIN_LINE.match(line.decode("iso-8859-1"))
        if plain is None:
            return _by_email_parser(lines, _class)
        # The email parser's compat32 policy keeps a value as sent, less the blanks after the
        # colon and the line ending.
        message[plain[1]] = plain[2].lstrip(" \t")
    message.set_payload("")  # what the email parser leaves: nothing after the blank line
    return message


def _by_email_parser(lines: list[bytes], _class) -> http.client.HTTPMessage:
    import email.parser

    return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))


class LeanHTTPResponse(http.client.HTTPResponse):
    """http.client's response, reading its headers with `parse_headers` above."""

    begin = types.FunctionType(http.client.HTTPResponse.begin.__code__,
                               dict(vars(http.client), parse_headers=parse_headers), "begin")
