"""The simulator's plain-WSGI plumbing: reading a request's JSON body and headers, writing
Moonshot-shaped JSON, HTML and error responses, and the connection itself (pausing while the
client stays, cutting it mid-response)."""
from __future__ import annotations

import errno
import itertools
import json
import socket
import time
import uuid
from http import HTTPStatus

from ...peer import peer_closed
from .directives import HANG_LIMIT_S, Behaviour
from .errors import ApiError, seconds


def encode_json(obj) -> bytes:
    """JSON as UTF-8; text that UTF-8 cannot carry (a lone surrogate in an odd reply) is sent
    as \\u escapes, which is still valid JSON."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def request_headers(environ: dict) -> dict:
    """The request headers by name, with the Authorization value hidden."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key
        else:
            continue
        name = name.replace("_", "-").title()
        headers[name] = "***" if name == "Authorization" else value
    return headers


def read_json(environ: dict):
    """The request body parsed as JSON, or None when it is absent or not JSON."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ["wsgi.input"]
    if length > 0:
        raw = stream.read(length)
    elif environ.get("wsgi.input_terminated"):  # chunked upload: the server marks where it ends
        raw = stream.read()
    else:
        raw = b""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _status_line(code: int) -> str:
    """"429 Too Many Requests"; codes unknown to HTTPStatus get a generic phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Error"


def json_response(start_response, status: int, payload: dict, extra_headers: list = ()) -> list[bytes]:
    """A JSON reply with Moonshot's headers."""
    data = encode_json(payload)
    start_response(_status_line(status), [
        ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(data))),
        ("Msh-Request-Id", str(uuid.uuid4())), *extra_headers])
    return [data]


def faulty_json_response(start_response, payload: dict, behaviour: Behaviour):
    """A 200 JSON reply whose body goes wrong after the headers (sim:body): `cut` (the
    connection closes halfway through the promised length), `stall` (half, then silence until
    the client leaves), `drip` (a byte every sim:interval seconds, forever) or `malformed`
    (a complete body that is not JSON). Returned as (pause, bytes) pieces, like a stream."""
    data = encode_json(payload)
    if behaviour.body == "malformed":
        data = data[: len(data) // 2]
    length = 10 ** 9 if behaviour.body == "drip" else len(data)
    start_response("200 OK", [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(length))])
    if behaviour.body == "drip":
        gap = behaviour.interval or 0.2
        return ((gap, bytes([byte])) for byte in itertools.cycle(data))
    if behaviour.body == "malformed":
        return [(0.0, data)]
    half = [(0.0, data[: len(data) // 2])]
    return half + ([(0.0, None)] if behaviour.body == "cut" else [(HANG_LIMIT_S, b"")])


def html_response(start_response, status: int) -> list[bytes]:
    """A gateway's HTML error page (Moonshot's long-request 504 looks like this)."""
    data = (f"<html><head><title>{_status_line(status)}</title></head><body><center><h1>{_status_line(status)}"
            "</h1></center><hr><center>nginx</center></body></html>").encode()
    start_response(_status_line(status), [("Content-Type", "text/html"), ("Content-Length", str(len(data)))])
    return [data]


def error_response(start_response, error: ApiError, extra_headers: list = ()) -> list[bytes]:
    """An ApiError as Moonshot's error body, with Retry-After when set."""
    headers = list(extra_headers)
    if error.retry_after is not None:
        headers.append(("Retry-After", seconds(error.retry_after)))
    return json_response(start_response, error.status,
                         {"error": {"message": error.message, "type": error.type}}, headers)


def pause_unless_client_left(wait_s: float, environ: dict) -> bool:
    """Sleeps between events, like a model generating; returns False as soon as the client
    closes its connection (as the real service stops generating when a caller hangs up).
    Only werkzeug's server exposes the socket; elsewhere this is a plain sleep."""
    sock = environ.get("werkzeug.socket")
    if sock is None:
        time.sleep(wait_s)
        return True
    deadline = time.monotonic() + wait_s
    while (remaining := deadline - time.monotonic()) > 0:
        closed = peer_closed(sock, remaining)
        if closed:
            return False
        if closed is False:
            time.sleep(min(remaining, 0.01))  # pipelined bytes, not a close: keep pausing
    return True


def cut_connection(environ: dict) -> None:
    """Drops the client connection mid-response, without the chunked terminator."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    # werkzeug treats ConnectionError as "connection dropped" and gevent.pywsgi ignores ECONNRESET;
    # both then close the socket without writing the final "0\r\n\r\n", so the client sees a truncated body.
    raise ConnectionResetError(errno.ECONNRESET, "simulated connection break (sim:break_after)")
