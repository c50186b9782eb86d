"""What the simulator's tests share: the key and model they use, a simulator of a test's own,
and small clients for one chat request, one stream read to its end, and one stream given up halfway."""
from __future__ import annotations

import json
from contextlib import contextmanager

import requests

from kimi_backend.moonshot.models import DEFAULT_MODEL
from kimi_backend.moonshot.simulator import start_in_thread
from tests.conftest import UPSTREAM_KEY
from tests.helpers import post_by_hand, receive_until

AUTH = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
MODEL = DEFAULT_MODEL
# Replies without reasoning unless a test asks for it, so chunk counts are the content's.
NO_THINKING = {"thinking": {"type": "disabled"}}


def chat(base, content, *, headers=AUTH, timeout=10, **fields):
    """POSTs a one-message chat request."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **NO_THINKING, **fields}
    return requests.post(f"{base}/chat/completions", json=body, headers=headers, timeout=timeout)


def read_stream(base, content, timeout=10, **fields):
    """Streams a chat request; returns (response, raw events as bytes, transport error or None)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True, **NO_THINKING,
            **fields}
    response = requests.post(f"{base}/chat/completions", json=body, headers=AUTH, stream=True, timeout=timeout)
    raw, error = b"", None
    try:
        for piece in response.iter_content(chunk_size=None):
            raw += piece
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as exc:
        error = exc
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), events
    return response, [e[len(b"data: "):] for e in events], error


def parse(events):
    """JSON chunks of a stream (everything but [DONE])."""
    return [json.loads(e) for e in events if e != b"[DONE]"]


def content_of(chunks, field="content"):
    """The concatenated delta text of one field."""
    return "".join(c["choices"][0]["delta"].get(field, "") for c in chunks if c["choices"])


def open_then_hang_up(port: int, content: str, events_to_read: int = 2) -> None:
    """Starts a stream on a raw socket, reads a few events, then closes the socket mid-stream."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True, **NO_THINKING}
    with post_by_hand(port, "/v1/chat/completions", body, AUTH) as sock:
        receive_until(sock, lambda received: received.count(b"data: ") >= events_to_read)


@contextmanager
def simulator_of_its_own(api_key: str = UPSTREAM_KEY):
    """A simulator for one test, stopped after it: for tests that configure it differently or
    read its live gauges (in_flight, open_streams), which reset() keeps and the session
    simulator's other users move."""
    server = start_in_thread(api_key=api_key)
    try:
        yield server
    finally:
        server.stop()
