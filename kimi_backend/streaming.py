"""Relaying an upstream stream to our client as the contract's SSE events: chunks flushed
as they arrive, keep-alive comments while nothing is sent, usage at the end, in-band errors
after the start, the upstream closed as soon as the client goes away, and an in-band
`shutting_down` ending when the server stops. The relay's duties (keep-alives, the client
check, the stop check) run on their own clock, whatever the upstream sends or does not."""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator

from .errors import error_body
from .moonshot.replies import StreamTally, first_choice_texts
from .moonshot.sse import DONE, KEEPALIVE, event
from .moonshot.stream import DRAIN_TIMEOUT_S, StreamBroken, UpstreamStream
from .observability.access_log import Exchange
from .peer import peer_closed

log = logging.getLogger("kimi_backend")

# Sent first, so the status and headers reach the client (and any proxy) at once, even when
# the upstream takes a long time to its first token.
OPENED = b": stream open\n\n"
# How often a stream checks whether its client is still there (and whether the server is
# stopping): a departed client's upstream is closed within this, plus the close itself.
CLIENT_POLL_S = 0.2
SHUTTING_DOWN = "The server is restarting, so this stream was ended early; send the request again."
_END = object()
# Bounds the wait for a finished reader to release its connection: its drain (1 s) and margin.
READER_JOIN_S = DRAIN_TIMEOUT_S + 1.0


def client_gone_probe(environ: dict) -> Callable[[], bool] | None:
    """A cheap check, built from the WSGI environ in the view, that tells whether the client
    has closed its connection; None when the server does not expose the socket."""
    sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")  # gevent / gevent_pywsgi workers
    if sock is None:
        return None

    def gone() -> bool:
        return bool(peer_closed(sock))
    return gone


def _pump(stream: UpstreamStream, chunks: queue.SimpleQueue, request_id: str) -> None:
    """Reads the upstream in its own thread (a greenlet under gevent), so the relay can send
    keep-alives and notice a departed client while the upstream is silent. It owns the
    upstream response and releases it when the stream ends or is aborted."""
    try:
        for chunk in stream.chunks():
            chunks.put(chunk)
        chunks.put(_END)
    except StreamBroken as exc:
        chunks.put(exc)
    except Exception:  # a bug in the reader must still end the stream in-band, not hang it
        # This thread has no request context, so the id is named here for the log line.
        log.exception("stream reader failed (request_id=%s)", request_id)
        chunks.put(StreamBroken("internal_error", "The stream failed inside the server."))
    finally:
        stream.close()


class ContractEvents:
    """The original contract's events (`/api/chat/stream`): `{"content"}` pieces, reasoning as
    `{"content": "", "reasoning"}`, one final event with the usage, then `[DONE]`."""

    def chunk(self, chunk: dict) -> Iterator[bytes]:
        """Our events for one upstream chunk (choice 0 only)."""
        for kind, text in first_choice_texts(chunk):
            yield event({"content": "", "reasoning": text} if kind == "reasoning" else {"content": text})

    def end(self, finish_reason: str | None, usage: dict | None) -> Iterator[bytes]:
        """The final event and `[DONE]`."""
        yield event({"content": "", "finish_reason": finish_reason or "stop", "usage": usage})
        yield DONE

    def error(self, code: str, message: str, request_id: str) -> Iterator[bytes]:
        """An in-band error, then `[DONE]`."""
        yield event(error_body(code, message, request_id=request_id))
        yield DONE


def relay(stream: UpstreamStream, *, keepalive_s: float, exchange: Exchange,
          client_gone: Callable[[], bool] | None = None, events=None,
          shutting_down: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """Yields the events (`events`: `ContractEvents` by default) for an open upstream stream,
    then its end; a failure after the start becomes an in-band error event, and so does the
    server's stop (`shutting_down()` true). Receives plain values only (never `request`) and
    always releases the upstream, also when the client leaves. Reports how the stream ended to
    `exchange` (the request's log line and metrics)."""
    events = events or ContractEvents()
    chunks: queue.SimpleQueue = queue.SimpleQueue()
    reader = threading.Thread(target=_pump, args=(stream, chunks, exchange.request_id), daemon=True)
    reader.start()
    watch_s = CLIENT_POLL_S if client_gone or shutting_down else keepalive_s
    tally = StreamTally()
    outcome = "client_closed"
    reader_done = False
    exchange.stream_started()
    try:
        yield OPENED
        last_sent = last_watch = time.monotonic()
        while True:
            # Wait for the next chunk, but no longer than the next duty is due: content-less
            # chunks and silence alike must not put off keep-alives or the client check.
            due = min(last_sent + keepalive_s, last_watch + watch_s)
            try:
                item = chunks.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                item = None
            now = time.monotonic()
            if now - last_watch >= watch_s:
                last_watch = now
                if client_gone is not None and client_gone():
                    return
                if shutting_down is not None and shutting_down():
                    outcome = "shutting_down"
                    yield from events.error(outcome, SHUTTING_DOWN, exchange.request_id)
                    return
            reader_done = item is _END or isinstance(item, StreamBroken)
            if item is _END:
                break
            if isinstance(item, StreamBroken):
                outcome = item.code
                yield from events.error(item.code, item.message, exchange.request_id)
                return
            if item is not None:
                tally.add(item)
                for piece in events.chunk(item):
                    yield piece
                    last_sent = time.monotonic()
            if time.monotonic() - last_sent >= keepalive_s:
                yield KEEPALIVE
                last_sent = time.monotonic()
        outcome = "ok"
        yield from events.end(tally.finish_reason, tally.usage)
    except Exception:  # a bug while relaying must still end the stream in-band, and be logged
        log.exception("stream relay failed (request_id=%s)", exchange.request_id)
        outcome = "internal_error"
        yield from events.error(outcome, "The stream failed inside the server.", exchange.request_id)
    finally:
        if not reader_done:
            # We stopped early (the client left, the server is stopping, a bug): wake the
            # reader, which then releases the upstream. (Once the reader has ended the stream
            # itself it releases it, and the connection may go back to the pool, so it is left alone.)
            stream.abort()
        else:
            # The reader is releasing the connection (reading the body's last bytes, at most
            # DRAIN_TIMEOUT_S). Our last event is already out; waiting here means the worker's
            # next request finds the connection back in the pool instead of opening another.
            reader.join(READER_JOIN_S)
        exchange.stream_ended(tally.usage, outcome, tally.text_bytes)
