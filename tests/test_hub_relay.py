"""hub_relay.py: a stream relayed by gevent's event loop, between two real gevent socket pairs
(the upstream's and the client's), in this process without patching it: events in order and
framed as gunicorn frames them, a slow client given everything, and every way a stream ends
(complete, broken, silent past the read timeout, the client gone, the server stopping, a bug).
The same relay under the real gunicorn worker: tests/test_streaming.py and
tests/test_hub_relay_served.py."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from types import SimpleNamespace

import gevent
import gevent.event
import gevent.socket
import gevent.ssl
import pytest

from kimi_backend.hub_relay import DirectClient, HubRelay, direct_client, upstream_reader
from kimi_backend.moonshot.framing import ChunkedBody, CloseDelimitedBody
from kimi_backend.moonshot.reading import ReplyLimits
from kimi_backend.moonshot.replies import StreamTally, plain_chunk
from kimi_backend.moonshot.stream import UpstreamStream
from kimi_backend.streaming import ContractEvents, client_gone_probe
from kimi_backend.workers import RESPONSE_KEY
from tests.helpers import require_binary

USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def chunk_json(text: str | None = None, *, reasoning: str | None = None, finish: str | None = None,
               usage: dict | None = None) -> bytes:
    delta = {}
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if text is not None:
        delta["content"] = text
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    if usage:
        choice["usage"] = usage
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2.6",
                       "choices": [choice]}, separators=(",", ":"), ensure_ascii=False).encode()


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event_block(payload: bytes) -> bytes:
    """One SSE event as one HTTP chunk, as Kimi (and the simulator) send them."""
    return http_chunk(b"data: " + payload + b"\n\n")


TEXTS = ["Hel", "lo, ", "w\u00f6rld", " \"quoted\" \\ and \u2028", "\U0001F600 done"]
BLOCKS = [event_block(chunk_json(text)) for text in TEXTS]
END = event_block(chunk_json(finish="stop", usage=USAGE)) + event_block(b"[DONE]") + b"0\r\n\r\n"


def expected_events(payloads: list[bytes]) -> bytes:
    """What the generator relay's reading makes of these payloads: the contract's events."""
    events = ContractEvents()
    return b"".join(events.chunk(plain_chunk(payload)) for payload in payloads)


def unchunk(raw: bytes) -> bytes:
    body = ChunkedBody()
    return body.decode(raw)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate and its key for localhost, made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def tls_pair(certificate):
    """A gevent socket pair with TLS over it: (our client end, the upstream's server end)."""
    cert, key = certificate
    server_context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cert)
    ours, theirs = gevent.socket.socketpair()
    server = gevent.spawn(server_context.wrap_socket, theirs, server_side=True)
    client = client_context.wrap_socket(ours, server_hostname="localhost")
    return client, server.get(timeout=10)


class Rig:
    """An upstream stream (over TLS or not) and a client connection, both gevent socket pairs;
    `relay()` makes the HubRelay, `run()` runs it in this greenlet."""

    def __init__(self, *, pending: bytes = b"", read_timeout_s: float = 5.0, chunked: bool = True,
                 framing=None, client_buffer: int | None = None, certificate=None):
        if certificate:
            self.upstream, self.upstream_peer = tls_pair(certificate)
        else:
            self.upstream, self.upstream_peer = gevent.socket.socketpair()
        self.client, self.client_peer = gevent.socket.socketpair()
        if client_buffer:
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, client_buffer)
            self.client_peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_buffer)
        self.released = False
        answer = SimpleNamespace(framing=framing or ChunkedBody(), pending=pending, sock=self.upstream,
                                 will_close=True, release=self._release)
        self.stream = UpstreamStream(answer, ReplyLimits(10 ** 9, 1 << 20), read_timeout_s, str)
        self.response = SimpleNamespace(sock=self.client, headers_sent=True, chunked=chunked, sent=0)
        self.tally = StreamTally()
        self.received = bytearray()
        self._reader = None
        self.greenlets = []

    def _release(self):
        self.released = True

    def read_client(self, delay_s: float = 0.0):
        """Reads the client's side until it closes, in a greenlet (after `delay_s`: a slow client)."""
        def read():
            if delay_s:
                gevent.sleep(delay_s)
            while True:
                block = self.client_peer.recv(65536)
                if not block:
                    return
                self.received += block
        self._reader = gevent.spawn(read)

    def send_upstream(self, *blocks: bytes, gap_s: float = 0.0, close: bool = False):
        def send():
            for block in blocks:
                self.upstream_peer.sendall(block)
                if gap_s:
                    gevent.sleep(gap_s)
            if close:
                self.upstream_peer.close()
        sender = gevent.spawn(send)
        self.greenlets.append(sender)
        return sender

    def relay(self, *, keepalive_s: float = 15.0, watch_s: float = 0.05, client_gone=None, shutting_down=None,
              events=None):
        reader = upstream_reader(self.stream)
        assert reader is not None
        return HubRelay(self.stream, reader, DirectClient(self.response), events or ContractEvents(), self.tally,
                        keepalive_s=keepalive_s, watch_s=watch_s, request_id="req-1",
                        client_gone=client_gone, shutting_down=shutting_down)

    def run(self, **kwargs):
        return self.relay(**kwargs).run()

    def finish(self) -> bytes:
        """Closes our client side and returns every byte the client received."""
        self.client.close()
        if self._reader is not None:
            self._reader.join(timeout=10)
        return bytes(self.received)

    def close(self):
        gevent.killall(self.greenlets + ([self._reader] if self._reader else []))
        for sock in (self.upstream, self.upstream_peer, self.client, self.client_peer):
            sock.close()


@pytest.fixture(params=["plain upstream", "TLS upstream"])
def rigs(request):
    """Makes rigs whose upstream is a plain gevent socket or gevent's TLS socket (each test runs with both)."""
    made = []
    tls = request.getfixturevalue("certificate") if request.param.startswith("TLS") else None

    def make(**kwargs) -> Rig:
        rig = Rig(certificate=tls, **kwargs)
        made.append(rig)
        return rig
    yield make
    for rig in made:
        rig.close()


def test_chunks_become_the_contracts_events_in_order_framed_as_gunicorn_frames_them(rigs):
    rig = rigs()
    rig.read_client()
    rig.send_upstream(*BLOCKS, END, gap_s=0.01)
    ending = rig.run()
    assert (ending.outcome, ending.wire, ending.queued) == ("ok", b"", b"")
    received = rig.finish()
    body = expected_events([chunk_json(text) for text in TEXTS])
    assert unchunk(received) == body
    assert rig.response.sent == len(body)
    assert rig.tally.usage == USAGE and rig.tally.finish_reason == "stop"
    assert rig.tally.text_bytes == sum(len(text.encode()) for text in TEXTS)
    assert rig.stream.complete


def test_chunks_read_as_text_give_the_same_bytes_as_chunks_read_in_full(rigs):
    """From the second chunk of a shape on, chunks are read as their text (TextTemplates);
    content, reasoning, a role, escapes and non-BMP text all come out as the full reading's."""
    payloads = [json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                            "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Hmm"},
                                         "finish_reason": None}]}).encode()]
    payloads += [chunk_json(reasoning=text) for text in ["Let", " me \\n think", "\u00e9\U0001F600"]]
    payloads += [chunk_json(text) for text in TEXTS]
    rig = rigs()
    rig.read_client()
    rig.send_upstream(*[event_block(payload) for payload in payloads], END)
    assert rig.run().outcome == "ok"
    assert unchunk(rig.finish()) == expected_events(payloads)
    assert rig.stream._templates is not None and len(rig.stream._templates._shapes) == 2


def test_several_chunks_in_one_block_go_out_in_one_write(rigs):
    rig = rigs()
    rig.read_client()
    rig.send_upstream(b"".join(BLOCKS) + END)
    assert rig.run().outcome == "ok"
    body = expected_events([chunk_json(text) for text in TEXTS])
    assert rig.finish() == b"%X\r\n%s\r\n" % (len(body), body)  # one HTTP chunk, sized as gunicorn sizes them


def test_an_http_1_0_client_gets_the_events_unframed(rigs):
    rig = rigs(chunked=False)
    rig.read_client()
    rig.send_upstream(*BLOCKS, END)
    assert rig.run().outcome == "ok"
    assert rig.finish() == expected_events([chunk_json(text) for text in TEXTS])


def test_the_body_that_came_with_the_head_goes_first(rigs):
    rig = rigs(pending=BLOCKS[0])
    rig.read_client()
    rig.send_upstream(*BLOCKS[1:], END)
    assert rig.run().outcome == "ok"
    assert unchunk(rig.finish()) == expected_events([chunk_json(text) for text in TEXTS])


def test_a_stream_complete_in_the_bytes_with_the_head_ends_without_waiting(rigs):
    rig = rigs(pending=b"".join(BLOCKS) + END)
    rig.read_client()
    began = time.monotonic()
    assert rig.run().outcome == "ok"
    assert time.monotonic() - began < 1
    assert unchunk(rig.finish()) == expected_events([chunk_json(text) for text in TEXTS])


def test_a_slow_client_gets_every_event_in_order_and_the_upstream_waits_for_it(rigs):
    """The client's buffers hold a few kilobytes and it starts reading late: the relay stops
    reading the upstream until the client has taken what it was sent, and nothing is lost."""
    texts = [f"{i:05d}:" + "x" * 2000 for i in range(300)]  # ~600 kB
    rig = rigs(client_buffer=4096)
    relay = rig.relay()
    rig.read_client(delay_s=0.3)
    sender = rig.send_upstream(*[event_block(chunk_json(text)) for text in texts], END)
    ending = relay.run()
    assert (ending.outcome, ending.queued) == ("ok", b"")
    assert DirectClient(rig.response).send_rest(ending.wire)  # what the client had not taken at the end
    received = rig.finish()
    sender.join(timeout=5)
    assert unchunk(received) == expected_events([chunk_json(text) for text in texts])


def test_a_client_that_has_gone_ends_the_stream_as_client_closed(rigs):
    rig = rigs()
    gone = client_gone_probe({"gunicorn.socket": rig.client})
    rig.send_upstream(BLOCKS[0])
    rig.client_peer.close()
    began = time.monotonic()
    ending = rig.run(client_gone=gone)
    assert ending.outcome == "client_closed"
    assert time.monotonic() - began < 2


def test_a_client_that_resets_while_being_written_to_ends_the_stream_as_client_closed(rigs):
    rig = rigs()
    rig.client_peer.close()
    rig.send_upstream(*BLOCKS, gap_s=0.02)
    ending = rig.run()  # no probe: the failed write tells
    assert (ending.outcome, ending.wire, ending.queued) == ("client_closed", b"", b"")


def test_keepalives_while_the_upstream_is_silent(rigs):
    rig = rigs()
    rig.read_client()
    sender = gevent.spawn_later(0.4, lambda: rig.upstream_peer.sendall(BLOCKS[0] + END))
    assert rig.run(keepalive_s=0.1).outcome == "ok"
    sender.join()
    received = unchunk(rig.finish())
    before_text = received.split(b"data:")[0]
    assert before_text.count(b": keep-alive\n\n") >= 2


def test_silence_past_the_read_timeout_ends_the_stream(rigs):
    rig = rigs(read_timeout_s=0.3)
    rig.send_upstream(BLOCKS[0])
    began = time.monotonic()
    ending = rig.run()
    assert (ending.outcome, ending.message) == ("upstream_timeout", "The upstream stopped sending for longer than the read timeout.")
    assert 0.3 <= time.monotonic() - began < 2


def test_the_servers_stop_ends_the_stream(rigs):
    rig = rigs()
    stopping = gevent.event.Event()
    gevent.spawn_later(0.1, stopping.set)
    rig.send_upstream(*BLOCKS, gap_s=0.05)
    assert rig.run(shutting_down=stopping.is_set).outcome == "shutting_down"


@pytest.mark.parametrize("tail, code", [
    (event_block(b"{not json"), "upstream_malformed"),
    (event_block(b'{"error": {"message": "overloaded"}}'), "upstream_error"),
    (b"0\r\n\r\n", "upstream_incomplete"),  # the body ends without [DONE]
])
def test_chunks_before_a_failure_in_the_same_block_are_relayed_then_the_failure_ends_it(rigs, tail, code):
    rig = rigs()
    rig.read_client()
    rig.send_upstream(BLOCKS[0] + BLOCKS[1] + tail)
    ending = rig.run()
    assert ending.outcome == code and ending.message
    assert unchunk(rig.finish()) == expected_events([chunk_json(TEXTS[0]), chunk_json(TEXTS[1])])


def test_broken_framing_ends_the_stream_as_disconnected(rigs):
    rig = rigs()
    rig.send_upstream(BLOCKS[0], gap_s=0.05)
    rig.send_upstream(b"zz\r\nbroken")
    assert rig.run().outcome == "upstream_disconnected"


def test_an_upstream_that_closes_mid_stream_is_disconnected(rigs):
    rig = rigs()
    rig.send_upstream(BLOCKS[0], close=True)
    assert rig.run().outcome == "upstream_disconnected"


def test_a_close_delimited_body_ends_at_the_close(rigs):
    rig = rigs(framing=CloseDelimitedBody())
    rig.read_client()
    body = b"".join(b"data: " + chunk_json(text) + b"\n\n" for text in TEXTS) + b"data: [DONE]\n\n"
    rig.send_upstream(body, close=True)
    assert rig.run().outcome == "ok"
    assert unchunk(rig.finish()) == expected_events([chunk_json(text) for text in TEXTS])


def test_a_bug_while_relaying_ends_the_stream_as_internal_error_and_is_logged(rigs, caplog):
    class BrokenEvents:
        def chunk(self, chunk):
            raise RuntimeError("a bug")
    rig = rigs()
    rig.send_upstream(BLOCKS[0])
    with caplog.at_level(logging.ERROR, logger="kimi_backend"):
        ending = rig.run(events=BrokenEvents())
    assert ending.outcome == "internal_error"
    assert any("req-1" in record.getMessage() and record.exc_info for record in caplog.records)


def test_a_killed_relay_leaves_no_watcher_behind(rigs):
    """The request's greenlet killed while it waits (the worker's graceful timeout): nothing
    reads the upstream afterwards."""
    rig = rigs()
    relay = rig.relay()
    runner = gevent.spawn(relay.run)
    gevent.sleep(0)  # the runner starts and parks, waiting for the loop
    assert not runner.dead and relay._readable.active and relay._ticker.active
    runner.kill()
    assert not (relay._readable.active or relay._writable.active or relay._ticker.active)
    rig.upstream_peer.sendall(BLOCKS[0])
    for _ in range(3):
        gevent.sleep(0)  # the loop runs: a watcher left behind would read now
    assert rig.upstream.recv(65536) == BLOCKS[0]  # still there: nobody read it


def test_only_the_service_workers_plain_http_1_responses_are_written_directly():
    plain, _ = gevent.socket.socketpair()
    with plain, _:
        response = SimpleNamespace(sock=plain, headers_sent=True, chunked=True, sent=0)
        assert isinstance(direct_client({RESPONSE_KEY: response}), DirectClient)
        assert direct_client({}) is None  # another server, or gunicorn's HTTP/2
        std, other = socket.socketpair()  # the gthread worker's plain socket
        with std, other:
            assert direct_client({RESPONSE_KEY: SimpleNamespace(sock=std)}) is None


def test_each_upstream_socket_is_read_the_way_it_can_be(rigs):
    rig = rigs()
    reader = upstream_reader(rig.stream)
    expected = "_TlsReader" if isinstance(rig.upstream, gevent.ssl.SSLSocket) else "_PlainReader"
    assert type(reader).__name__ == expected
    std, other = socket.socketpair()  # a thread's socket: the generator relay's
    with std, other:
        rig.stream._answer.sock = std
        assert upstream_reader(rig.stream) is None


class FakeExchange:
    request_id = "req-1"

    def stream_started(self):
        pass

    def stream_ended(self, usage, outcome, relayed_bytes=0):
        self.ended = (usage, outcome, relayed_bytes)


def test_a_stream_tls_cannot_read_without_writing_goes_back_to_the_generator_relay(certificate, monkeypatch):
    """TLS that must write before it can read (a renegotiation) hands the stream back: the
    generator relay goes on from where the event loop stopped, and nothing is lost or doubled."""
    from kimi_backend.hub_relay import _HandBack, _TlsReader
    from kimi_backend.streaming import relay

    reads = {"n": 0}
    real_read = _TlsReader.read

    def read_then_need_to_write(self):
        reads["n"] += 1
        if reads["n"] == 3:
            raise _HandBack
        return real_read(self)
    monkeypatch.setattr(_TlsReader, "read", read_then_need_to_write)
    rig = Rig(certificate=certificate)
    try:
        rig.read_client()
        rig.send_upstream(*BLOCKS, END, gap_s=0.02)
        exchange = FakeExchange()
        events = relay(rig.stream, keepalive_s=15, exchange=exchange, client=DirectClient(rig.response))
        yielded = b"".join(events)  # what gunicorn would frame and write after the event loop's part
        direct = unchunk(rig.finish())
    finally:
        rig.close()
    assert reads["n"] == 3
    assert yielded.startswith(b": stream open\n\n")
    final = ContractEvents().end("stop", USAGE)
    assert direct + yielded[len(b": stream open\n\n"):] == expected_events([chunk_json(text) for text in TEXTS]) + final
    assert exchange.ended == (USAGE, "ok", sum(len(text.encode()) for text in TEXTS))


def test_a_client_too_slow_for_the_first_block_holds_the_upstream_reads_from_the_start(rigs):
    """The bytes that came with the upstream's head already fill the client's buffers: the
    relay waits for the client before it reads the upstream at all."""
    texts = [f"{i:04d}:" + "y" * 2000 for i in range(150)]  # ~300 kB with the head
    rig = rigs(pending=b"".join(event_block(chunk_json(text)) for text in texts), client_buffer=4096)
    relay = rig.relay()
    runner = gevent.spawn(relay.run)
    gevent.sleep(0)  # the runner sends what it can and parks
    assert relay._writable.active and not relay._readable.active
    rig.send_upstream(BLOCKS[0], END)
    rig.read_client()
    ending = runner.get(timeout=10)
    assert (ending.outcome, ending.queued) == ("ok", b"")
    assert DirectClient(rig.response).send_rest(ending.wire)
    assert unchunk(rig.finish()) == expected_events([chunk_json(text) for text in texts + [TEXTS[0]]])
