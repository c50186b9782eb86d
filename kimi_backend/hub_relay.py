"""Relaying a stream from gevent's event loop: under the gevent worker, once our 200 and the
first event are out, a stream's chunks are read, turned into events and written to the client
by callbacks the event loop runs when the upstream socket is readable, and its duties
(keep-alives, the client check, the server's stop, the read timeout) by one repeating timer.

The generator relay (streaming.py) wakes its greenlet for every chunk, re-arms a read watcher
and goes back through gunicorn's write loop: measured on a loop of 200 loopback connections,
that machinery alone cost 10.7 µs per message, a callback 6.5 µs. The request's greenlet
waits meanwhile, and takes the stream's end back (final event, in-band errors) through
gunicorn as before.

Used only where it can write the client's bytes exactly as gunicorn would: a plain (not TLS)
gevent socket to the client and an HTTP/1 response from the service's worker
(`workers.OneSendResponse`, which puts itself in the environ); the upstream's socket may be
plain or TLS (gevent's). Anything else is relayed by the generator, which also takes a stream
back when TLS needs to write in order to read (`Ending.outcome` "handback")."""
from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Callable

from .moonshot.reading import READ_BLOCK
from .moonshot.stream import StreamBroken, UpstreamStream, disconnected
from .moonshot.replies import StreamTally, TextDelta
from .moonshot.sse import KEEPALIVE
from .workers import RESPONSE_KEY, is_plain_gevent_socket

log = logging.getLogger("kimi_backend")


class DirectClient:
    """The client's connection under a response whose head (status, headers, first event)
    gunicorn has sent: body bytes are framed as gunicorn frames them (chunked for HTTP/1.1)
    and counted in its response, so its access log and its closing chunk stay right."""

    def __init__(self, response):
        self._response = response
        self.socket = response.sock._sock  # non-blocking, as gevent keeps it

    def ready(self) -> bool:
        """Whether gunicorn has sent the response's head (it has once the first event is out)."""
        return bool(self._response.headers_sent)

    def frame(self, data: bytes) -> bytes:
        """`data` as it goes on the wire: a chunk of the chunked body, or as it is."""
        self._response.sent += len(data)
        if self._response.chunked:
            return b"%X\r\n%s\r\n" % (len(data), data)
        return data

    def send_rest(self, wire: bytes) -> bool:
        """Sends framed bytes that the event loop could not, waiting as long as it takes (the
        request's greenlet, not the loop, waits); False when the client has gone."""
        try:
            self._response.sock.sendall(wire)
        except OSError:
            return False
        return True


def direct_client(environ: dict) -> DirectClient | None:
    """The client connection a hub relay may write to, when this request is served by the
    service's gevent worker over a plain socket; None otherwise."""
    response = environ.get(RESPONSE_KEY)
    if response is None:
        return None
    if not is_plain_gevent_socket(response.sock):
        return None  # TLS straight to gunicorn: its own socket writes
    return DirectClient(response)


class _PlainReader:
    """The upstream's plain gevent socket, read through the OS socket under it (by
    `HubRelay._on_plain_readable` itself: a call less per chunk)."""

    def __init__(self, sock):
        self.socket = sock._sock  # non-blocking, as gevent keeps it


class _TlsReader:
    """The upstream's TLS socket (gevent's), read through its SSL object without waiting.
    Bytes decrypted but not yet read (`pending`) do not make the socket readable."""

    def __init__(self, sock):
        self.socket = sock
        self._tls = sock._sslobj

    def read(self) -> bytes | None:
        """The next block, b"" at the close, None when nothing is there; raises OSError, and
        `_HandBack` when TLS must write before it can read (a renegotiation), which the
        generator relay's socket waits for."""
        try:
            return self._tls.read(READ_BLOCK)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLWantWriteError:
            raise _HandBack from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # a close, with or without TLS's own notice
            return b""

    def pending(self) -> int:
        """Bytes decrypted and waiting in the SSL object."""
        return self._tls.pending()


class _HandBack(Exception):
    """The stream goes back to the generator relay."""


def upstream_reader(stream: UpstreamStream) -> _PlainReader | _TlsReader | None:
    """How the event loop can read this stream's upstream socket: a plain gevent socket or
    gevent's TLS socket; None for any other (threads)."""
    sock = stream.socket
    if is_plain_gevent_socket(sock):
        return _PlainReader(sock)
    kind = type(sock)
    if kind.__module__ == "gevent.ssl" and kind.__name__ == "SSLSocket" and getattr(sock, "_sslobj", None) is not None:
        return _TlsReader(sock)
    return None


def events_of(chunks: list[dict | TextDelta], tally: StreamTally, events) -> bytes:
    """The events of one block's chunks, in one piece, each chunk counted in `tally` (a text
    delta by its text alone); for both relays, this one and the generator (streaming.py)."""
    out = b""
    for chunk in chunks:
        if type(chunk) is TextDelta:
            tally.add_text(chunk.text)
            out += events.text(chunk)
        else:
            tally.add(chunk)
            out += events.chunk(chunk)
    return out


@dataclass
class Ending:
    """How the event loop's part of a stream ended: `outcome` ("ok", "client_closed",
    "shutting_down", "internal_error", a `StreamBroken` code, or "handback": the generator
    relay goes on with the stream) and its message; `wire`: framed bytes still to send;
    `queued`: events not yet framed (a slow client's)."""

    outcome: str
    message: str = ""
    wire: bytes = b""
    queued: bytes = b""


class HubRelay:
    """One stream relayed by event-loop callbacks. `run()` from the request's greenlet: it
    returns the `Ending` once the stream is complete, broken, or to be ended."""

    def __init__(self, stream: UpstreamStream, reader: _PlainReader | _TlsReader, client: DirectClient, events,
                 tally: StreamTally, *, keepalive_s: float, watch_s: float, request_id: str,
                 client_gone: Callable[[], bool] | None, shutting_down: Callable[[], bool] | None):
        from gevent import get_hub
        from gevent.hub import Waiter

        hub = get_hub()
        self._stream = stream
        self._upstream = reader.socket
        self._tls = reader if isinstance(reader, _TlsReader) else None
        # Plain sockets: one read per readable event (the common case, kept lean); TLS: reads
        # until the SSL object holds nothing more.
        self._on_readable = self._on_plain_readable if self._tls is None else self._on_tls_readable
        self._client = client
        self._events = events
        self._tally = tally
        self._request_id = request_id
        self._read_timeout_s = stream.read_timeout_s
        self._client_gone = client_gone
        self._shutting_down = shutting_down
        self._readable = hub.loop.io(self._upstream.fileno(), 1)  # 1: readable
        self._writable = hub.loop.io(client.socket.fileno(), 2)  # 2: writable
        tick = min(watch_s, keepalive_s, self._read_timeout_s)
        self._ticker = hub.loop.timer(tick, tick)
        # A keep-alive due within half a tick goes now: the tick that finds it due a hair
        # early (its clock and ours differ by microseconds) would otherwise put it off a
        # whole tick.
        self._keepalive_due_s = keepalive_s - tick / 2
        self._waiter = Waiter(hub)
        self._wire = b""  # framed bytes the client's socket has not taken yet
        self._queued = b""  # events made meanwhile, framed when the wire is clear
        self._last_sent = time.monotonic()
        self._ending: Ending | None = None
        if hasattr(events, "text"):  # events that need only the text of a text-only chunk
            stream.read_text_deltas()

    def run(self) -> Ending:
        """Relays until the stream ends; the watchers are gone when it returns (also when
        the greenlet is killed while it waits)."""
        try:
            try:
                self._relay(self._stream.receive(0))  # what came with the upstream's head
            except StreamBroken as exc:
                self._broken(exc)
            if self._ending is None:
                if not self._wire:  # else a slow client already: reading starts once it has taken that
                    self._readable.start(self._on_readable)
                self._ticker.start(self._on_tick, update=True)
                self._read_pending()
            if self._ending is None:
                return self._waiter.get()
            return self._ending
        finally:
            for watcher in (self._readable, self._writable, self._ticker):
                watcher.stop()
                watcher.close()

    # Event-loop callbacks. Each catches everything: an exception in a callback would only be
    # printed by gevent, and the stream would hang.

    def _on_plain_readable(self) -> None:
        try:
            try:
                block = self._upstream.recv(READ_BLOCK)
            except BlockingIOError:
                return
            except OSError:
                self._broken(disconnected())
                return
            self._relay(self._stream.take(block))
        except StreamBroken as exc:
            self._broken(exc)
        except Exception:
            self._failed()

    def _on_tls_readable(self) -> None:
        tls = self._tls
        try:
            while self._ending is None and not self._wire:  # a slow client: reading waits for it
                try:
                    block = tls.read()
                except _HandBack:
                    self._end("handback")
                    return
                except OSError:  # ssl.SSLError included
                    self._broken(disconnected())
                    return
                if block is None:
                    return
                self._relay(self._stream.take(block))
                if not tls.pending():
                    return
        except StreamBroken as exc:
            self._broken(exc)
        except Exception:
            self._failed()

    def _read_pending(self) -> None:
        """Reads what TLS has already decrypted: the socket will not say it is readable."""
        if self._tls is not None and self._ending is None and not self._wire and self._tls.pending():
            self._on_tls_readable()

    def _on_writable(self) -> None:
        try:
            self._flush()
            if not self._wire and self._ending is None:
                self._writable.stop()
                self._stream.resume()  # the upstream was not read meanwhile: that was not its silence
                self._readable.start(self._on_readable)
                self._read_pending()
        except Exception:
            self._failed()

    def _on_tick(self) -> None:
        # Every duty on every tick (the shortest of their periods): a keep-alive or a timeout
        # comes within a tick of when it is due.
        try:
            now = time.monotonic()
            if not self._wire and self._stream.silent_for(now) >= self._read_timeout_s:
                self._end("upstream_timeout", "The upstream stopped sending for longer than the read timeout.")
                return
            if self._client_gone is not None and self._client_gone():
                self._end("client_closed")
                return
            if self._shutting_down is not None and self._shutting_down():
                self._end("shutting_down")
                return
            if not self._wire and now - self._last_sent >= self._keepalive_due_s:
                self._send(KEEPALIVE)
        except Exception:
            self._failed()

    # Relaying.

    def _relay(self, chunks: list[dict | TextDelta]) -> None:
        """Sends the events of `chunks` (all in one write), then ends the stream when it is
        complete or failed."""
        if chunks:
            out = events_of(chunks, self._tally, self._events)
            if out:
                self._send(out)
        if self._ending is not None:
            return
        if self._stream.complete:
            self._end("ok")
        elif self._stream.failure is not None:
            self._broken(self._stream.failure)

    def _send(self, data: bytes) -> None:
        """Writes events to the client now, or queues them behind what it has not taken."""
        if self._wire:
            self._queued += data
            return
        self._wire = self._client.frame(data)
        self._flush()
        if self._wire and self._ending is None:
            # A slow client: stop reading the upstream (as a blocked write would) until it
            # has taken what it was sent.
            self._readable.stop()
            self._writable.start(self._on_writable)

    def _flush(self) -> None:
        """Sends as much of the wire (then of the queue) as the client's socket takes."""
        while self._wire:
            try:
                sent = self._client.socket.send(self._wire)
            except BlockingIOError:
                return
            except OSError:  # the client has gone
                self._wire = self._queued = b""
                self._end("client_closed")
                return
            self._wire = self._wire[sent:]
            if not self._wire:
                self._last_sent = time.monotonic()
                if self._queued:
                    self._wire, self._queued = self._client.frame(self._queued), b""

    def _broken(self, failure: StreamBroken) -> None:
        self._end(failure.code, failure.message)

    def _failed(self) -> None:
        log.exception("stream relay failed (request_id=%s)", self._request_id)
        self._end("internal_error", "The stream failed inside the server.")

    def _end(self, outcome: str, message: str = "") -> None:
        """Stops the watchers and hands the ending to the waiting greenlet (called last in a
        callback: the greenlet runs before the callback returns)."""
        if self._ending is not None:
            return
        self._readable.stop()
        self._writable.stop()
        self._ticker.stop()
        self._ending = Ending(outcome, message, self._wire, self._queued)
        self._waiter.switch(self._ending)
