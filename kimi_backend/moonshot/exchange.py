"""One HTTP/1.1 request to the upstream and the head of its answer, on a connection from
urllib3's pool: the request goes out in one `sendall`, the status line and headers are read
from the first block(s) that come back, and the body is left for the caller (`read_body` in
reading.py for a whole reply, `UpstreamStream` for a stream), framed by framing.py.

urllib3 still opens the connections (TCP, TLS and its verification, a proxy's CONNECT
tunnel), pools them, and checks a pooled one before it is used again. What this replaces is
urllib3's `urlopen` and http.client's request and response objects: about 550 Python calls
per upstream call (header by header `putheader`, a buffered reader, an `HTTPMessage`, the
response wrapper), against a few dozen here. Timed in one process against the simulator,
2,000 calls each, alternated twice with the commit before: 697 and 745 µs of CPU per call
through urllib3, 150 and 291 µs through this module, 108-131 µs for the same bytes written
and read on a bare socket. Everything an upstream may send is still read: any
framing (chunked, Content-Length, until the close), interim 1xx answers, folded header lines;
a head that is not HTTP fails as urllib3's would (`ProtocolError`, mapped by the client)."""
from __future__ import annotations

import socket
from http.client import RemoteDisconnected

from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, ProtocolError, ReadTimeoutError
from urllib3.util import parse_url
from urllib3.util.proxy import connection_requires_http_tunnel

from .framing import ChunkedBody, CloseDelimitedBody, LengthBody

# A response head (status line and headers) longer than this is not an upstream's.
MAX_HEAD_BYTES = 65536
_HEAD_BLOCK = 65536
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Target:
    """Where one kind of request goes: its pool, and the bytes of its request line and headers
    up to the Content-Length (the same for every call)."""

    __slots__ = ("pool", "url", "_head", "_tunnel")

    def __init__(self, pool: HTTPConnectionPool, method: str, url: str, base_url: str, headers: dict[str, str]):
        """`url` is the request target urllib3 would send to `pool` (a path, or the absolute URL
        for a plain-HTTP proxy); `base_url` names the upstream for the Host header."""
        self.pool = pool
        self.url = url
        upstream = parse_url(base_url)
        host = upstream.host or ""
        if upstream.port and upstream.port != _DEFAULT_PORTS.get(upstream.scheme or "http"):
            host = f"{host}:{upstream.port}"
        lines = [f"{method} {url} HTTP/1.1", f"Host: {host}"]
        sent = dict(headers)
        if pool.proxy is not None and pool.scheme == "http":
            sent.update(pool.proxy_headers)  # a plain-HTTP proxy reads them from the request itself
        for name, value in sent.items():
            if any(ch in value for ch in "\r\n\0") or any(ch in name for ch in "\r\n\0: "):
                raise ValueError(f"the header {name!r} cannot be sent as it is")
            lines.append(f"{name}: {value}")
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._tunnel = pool.proxy is not None and connection_requires_http_tunnel(
            pool.proxy, pool.proxy_config, pool.scheme)

    def request_bytes(self, body: bytes | None) -> bytes:
        """The whole request: the head, then `body` with its length."""
        if body is None:
            return self._head + b"\r\n"
        return b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)

    def connection(self, connect_timeout_s: float):
        """A connection from the pool, connected (through the proxy's tunnel when there is one).
        Raises urllib3's `ConnectTimeoutError` (or `NewConnectionError`) or `OSError`."""
        pool = self.pool
        conn = pool._get_conn()
        try:
            if conn.is_closed:  # new, or closed after its last answer
                conn.timeout = connect_timeout_s
                try:
                    if self._tunnel:
                        pool._prepare_proxy(conn)
                    else:
                        conn.connect()
                except socket.timeout:  # TLS's handshake, or the proxy's CONNECT
                    raise ConnectTimeoutError(conn, "timed out connecting") from None
        except BaseException:
            _give_back(pool, conn, reusable=False)
            raise
        return conn


class Answer:
    """An upstream answer whose status line and headers are read. `headers` maps lower-case
    names to values (repeated ones joined with ", "); `pending` holds the body bytes that came
    with the head; `framing` decodes the rest. `release()` gives the connection back."""

    __slots__ = ("status", "headers", "framing", "pending", "sock", "will_close", "_pool", "_conn")

    def __init__(self, pool: HTTPConnectionPool, conn, status: int, headers: dict[str, str],
                 framing: ChunkedBody | LengthBody | CloseDelimitedBody, will_close: bool, pending: bytes):
        self._pool = pool
        self._conn = conn
        self.sock = conn.sock
        self.status = status
        self.headers = headers
        self.framing = framing
        self.will_close = will_close or isinstance(framing, CloseDelimitedBody)
        self.pending = pending  # whoever reads the body takes these first, and empties this

    def release(self) -> None:
        """Gives the connection back to the pool: open for the next request when the body was
        read to its end and nothing more came, closed otherwise (which also tells the upstream
        at once that nobody is listening). Calling it again does nothing."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        framing = self.framing
        reusable = framing.done and not (framing.extra or self.pending or self.will_close)
        _give_back(self._pool, conn, reusable)


def exchange(target: Target, body: bytes | None, connect_timeout_s: float, read_timeout_s: float) -> Answer:
    """Sends one request on a pooled connection and reads its answer's head. Raises urllib3's
    errors as `urlopen` would for the same failure: `ConnectTimeoutError` or
    `NewConnectionError` connecting, `ReadTimeoutError` when the upstream is silent for
    `read_timeout_s`, `ProtocolError` for a connection closed before the head or a head that
    is not HTTP, `OSError` for a connection that broke. On any failure the connection is
    closed and given back."""
    conn = target.connection(connect_timeout_s)
    try:
        sock = conn.sock
        sock.settimeout(read_timeout_s)
        sock.sendall(target.request_bytes(body))
        status, headers, will_close, pending = read_head(sock)
        framing = body_framing(status, headers)
    except BaseException as exc:
        _give_back(target.pool, conn, reusable=False)
        if isinstance(exc, socket.timeout):
            raise ReadTimeoutError(target.pool, target.url, f"Read timed out. (read timeout={read_timeout_s})") from None
        raise
    return Answer(target.pool, conn, status, headers, framing, will_close, pending)


def _give_back(pool: HTTPConnectionPool, conn, reusable: bool) -> None:
    """Puts `conn` back in `pool`: open for the next request, or closed (the pool opens a new
    one in its place when it is next taken)."""
    if not reusable:
        conn.close()
    pool._put_conn(conn)


def read_head(sock) -> tuple[int, dict[str, str], bool, bytes]:
    """Reads an answer's status line and headers off `sock`, skipping interim (1xx) answers:
    (status, headers, whether the upstream will close the connection, the body bytes read
    with the head). Raises `ProtocolError` for a head that is not HTTP or too long, or a
    connection closed before it."""
    data = b""
    while True:
        end = _head_end(data)
        while end < 0 and len(data) <= MAX_HEAD_BYTES:
            block = sock.recv(_HEAD_BLOCK)
            if not block:
                raise ProtocolError("Connection aborted.", RemoteDisconnected(
                    "Remote end closed connection without response" if not data else "Response head cut short"))
            data += block
            end = _head_end(data)
        if end < 0 or end > MAX_HEAD_BYTES:
            raise ProtocolError("The upstream's response head is too long.")
        status, headers, will_close = parse_head(data[:end])
        data = data[end:]
        if not 100 <= status < 200 or status == 101:
            return status, headers, will_close, data


def _head_end(data: bytes) -> int:
    """Where the head in `data` ends (after its empty line), or -1. Lines may end in a bare LF,
    as http.client allows."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    if 0 <= lf < crlf:
        return lf + 2
    return crlf + 3


def parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """The status, the headers (lower-case names; a folded line joined to the one before,
    repeated names joined with ", ", lines without a colon skipped, as http.client keeps them
    out of the way too) and whether the connection ends with this answer."""
    lines = head.decode("iso-8859-1").split("\n")
    status_line = lines[0].rstrip("\r")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ProtocolError("Connection aborted.", RemoteDisconnected(f"Not an HTTP status line: {status_line[:80]!r}"))
    status = int(parts[1])
    if status < 100:
        raise ProtocolError("Connection aborted.", RemoteDisconnected(f"Not an HTTP status: {status}"))
    headers: dict[str, str] = {}
    last = None
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t" and last is not None:
            headers[last] = f"{headers[last]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        value = value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    connection = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    if parts[0] == "HTTP/1.0":
        will_close = "keep-alive" not in connection
    else:
        will_close = "close" in connection
    return status, headers, will_close


def body_framing(status: int, headers: dict[str, str]) -> ChunkedBody | LengthBody | CloseDelimitedBody:
    """How the body after a head with `status` and `headers` is delimited (RFC 9112 §6.3):
    none for 204 and 304, chunked when that is the last transfer coding, then
    Content-Length, then the close. A Content-Length that is not one number fails as
    http.client's would."""
    if status in (204, 304):
        return LengthBody(0)
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
            return ChunkedBody()
        return CloseDelimitedBody()
    length = headers.get("content-length")
    if length is not None:
        values = {value.strip() for value in length.split(",")}
        value = values.pop() if len(values) == 1 else ""
        if not value.isdigit():
            raise ProtocolError("Connection aborted.", RemoteDisconnected(f"Bad Content-Length: {length[:40]!r}"))
        return LengthBody(int(value))
    return CloseDelimitedBody()
