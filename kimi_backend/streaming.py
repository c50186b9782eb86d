"""Relaying an upstream stream to our client as the contract's SSE events: chunks flushed
as they arrive, keep-alive comments while nothing is sent, usage at the end, in-band errors
after the start, the upstream closed as soon as the client goes away, and an in-band
`shutting_down` ending when the server stops. The relay reads the upstream itself, waiting
for it no longer than its next duty (keep-alive, client check, stop check) is due, so those
run on their own clock whatever the upstream sends or does not, with no reader thread."""
from __future__ import annotations

import logging
import ssl
import time
from typing import Callable, Iterator

from .errors import error_body
from .hub_relay import DirectClient, HubRelay, events_of, upstream_reader
from .moonshot.replies import StreamTally, TextDelta, first_choice_texts
from .moonshot.sse import DONE, KEEPALIVE, event, text_event
from .moonshot.stream import StreamBroken, UpstreamStream
from .observability.access_log import Exchange
from .peer import peek_now, peer_closed

log = logging.getLogger("kimi_backend")

# Sent first, so the status and headers reach the client (and any proxy) at once, even when
# the upstream takes a long time to its first token.
OPENED = b": stream open\n\n"
# How often a stream checks whether its client is still there (and whether the server is
# stopping): a departed client's upstream is closed within this plus WATCH_SLACK_S, plus the
# close itself.
CLIENT_POLL_S = 0.2
# How much later than that a stream that is not woken by its upstream wakes for the check. A
# stream whose chunks keep coming (Kimi's are 20-35 ms apart) runs the check when the next
# chunk arrives; waking it just for the check, between two chunks, cost a tenth of its wake-ups.
WATCH_SLACK_S = 0.05
# The contract's text events up to their text: `{"content": text}`, `{"content": "", "reasoning": text}`.
_CONTENT = b'{"content":'
_REASONING = b'{"content":"","reasoning":'
SHUTTING_DOWN = "The server is restarting, so this stream was ended early; send the request again."


def client_gone_probe(environ: dict) -> Callable[[], bool] | None:
    """A cheap check, built from the WSGI environ in the view, that tells whether the client
    has closed its connection; None when the server does not expose the socket."""
    sock = environ.get("gunicorn.socket") or environ.get("gunicorn.sock")  # gevent / gevent_pywsgi workers
    if sock is None:
        return None
    # gevent's socket would wait on a peek that finds nothing; the OS socket under it answers
    # at once, one system call instead of a poll object and its watchers (a tenth of the
    # relay's CPU went there). A socket with a timeout would poll first: use the general check.
    raw = getattr(sock, "_sock", sock)
    if isinstance(raw, ssl.SSLSocket) or raw.gettimeout():
        return lambda: bool(peer_closed(sock))
    return lambda: peek_now(raw) == b""  # bytes waiting (pipelined) are not a close


class ContractEvents:
    """The original contract's events (`/api/chat/stream`): `{"content"}` pieces, reasoning as
    `{"content": "", "reasoning"}`, one final event with the usage, then `[DONE]`."""

    def chunk(self, chunk: dict) -> bytes:
        """Our events for one upstream chunk (choice 0 only)."""
        out = b""
        for kind, text in first_choice_texts(chunk):
            out += text_event(_REASONING if kind == "reasoning" else _CONTENT, text)
        return out

    def text(self, delta: TextDelta) -> bytes:
        """Our event for a text-only chunk read as its text (`UpstreamStream.read_text_deltas`):
        the same bytes `chunk` makes of that chunk."""
        return text_event(_REASONING if delta.kind == "reasoning" else _CONTENT, delta.text)

    def end(self, finish_reason: str | None, usage: dict | None) -> bytes:
        """The final event and `[DONE]`."""
        return event({"content": "", "finish_reason": finish_reason or "stop", "usage": usage}) + DONE

    def error(self, code: str, message: str, request_id: str) -> bytes:
        """An in-band error, then `[DONE]`."""
        return event(error_body(code, message, request_id=request_id)) + DONE


def relay(stream: UpstreamStream, *, keepalive_s: float, exchange: Exchange,
          client_gone: Callable[[], bool] | None = None, events=None,
          shutting_down: Callable[[], bool] | None = None, client: DirectClient | None = None) -> Iterator[bytes]:
    """Yields the events (`events`: `ContractEvents` by default) for an open upstream stream,
    then its end; a failure after the start becomes an in-band error event, and so does the
    server's stop (`shutting_down()` true). Receives plain values only (never `request`) and
    always releases the upstream, also when the client leaves. Reports how the stream ended to
    `exchange` (the request's log line and metrics). With `client` (the gevent worker's plain
    connection, `hub_relay.direct_client`) and an upstream socket to match, the chunks between
    the first event and the end are relayed from the event loop (hub_relay.py)."""
    events = events or ContractEvents()
    watch_s = CLIENT_POLL_S if client_gone or shutting_down else keepalive_s
    tally = StreamTally()
    outcome = "client_closed"
    exchange.stream_started()
    try:
        yield OPENED
        reader = upstream_reader(stream) if client is not None and client.ready() else None
        if reader is not None:
            ending = HubRelay(stream, reader, client, events, tally, keepalive_s=keepalive_s, watch_s=watch_s,
                              request_id=exchange.request_id, client_gone=client_gone,
                              shutting_down=shutting_down).run()
            outcome = ending.outcome
            if outcome == "client_closed" or not client.send_rest(ending.wire):
                outcome = "client_closed"
                return
            if outcome == "ok":
                yield ending.queued + events.end(tally.finish_reason, tally.usage)
                return
            if outcome != "handback":
                message = SHUTTING_DOWN if outcome == "shutting_down" else ending.message
                yield ending.queued + events.error(outcome, message, exchange.request_id)
                return
            outcome = "client_closed"
            if ending.queued:
                yield ending.queued
        last_sent = last_watch = time.monotonic()
        while not stream.complete:
            # Wait for the upstream, but no longer than the next duty is due: content-less
            # chunks and silence alike must not put off keep-alives or the client check.
            due = min(last_sent + keepalive_s, last_watch + watch_s + WATCH_SLACK_S)
            try:
                chunks = stream.receive(due - time.monotonic())
            except StreamBroken as exc:
                outcome = exc.code
                yield events.error(exc.code, exc.message, exchange.request_id)
                return
            now = time.monotonic()
            if chunks:
                # Every chunk that came in one block goes out in one write (text deltas too,
                # in a stream the hub relay handed back).
                out = events_of(chunks, tally, events)
                if out:
                    yield out
                    last_sent = now
            if now - last_watch >= watch_s:
                last_watch = now
                if client_gone is not None and client_gone():
                    return
                if shutting_down is not None and shutting_down():
                    outcome = "shutting_down"
                    yield events.error(outcome, SHUTTING_DOWN, exchange.request_id)
                    return
            if now - last_sent >= keepalive_s:
                yield KEEPALIVE
                last_sent = time.monotonic()
        outcome = "ok"
        yield events.end(tally.finish_reason, tally.usage)
    except Exception:  # a bug while relaying must still end the stream in-band, and be logged
        log.exception("stream relay failed (request_id=%s)", exchange.request_id)
        outcome = "internal_error"
        yield events.error(outcome, "The stream failed inside the server.", exchange.request_id)
    finally:
        # Our last event is out. After a complete stream this reads the body's last bytes, so
        # the worker's next request finds the connection back in the pool instead of opening
        # another; any other end closes the upstream request.
        stream.close()
        exchange.stream_ended(tally.usage, outcome, tally.text_bytes)
