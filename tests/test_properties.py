"""Property tests (hypothesis): the SSE reader and writer for any text, split at any byte, with
long lines; the text events the same as the general ones; the plain reading of a stream chunk
the same as the general one; upstream text made encodable; the key redacted in any surrounding; request
validation that answers every body with a model or a 400 naming a real field."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kimi_backend.api.openai import OpenAIEvents
from kimi_backend.errors import ApiError
from kimi_backend.moonshot import replies
from kimi_backend.moonshot.redaction import FRAGMENT_CHARS, KeyRedactor
from kimi_backend.moonshot.sse import DataLines, LineTooLong, event, text_event
from kimi_backend.streaming import ContractEvents
from kimi_backend.schemas import CompletionRequest, HistoryRequest, OpenAIChatRequest, StreamRequest, parse

# Any JSON value, with any Unicode text (lone surrogates excluded: JSON text on the wire is
# UTF-8, which cannot carry them; replies.encodable handles those, tested below).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
# What else may sit between events in a valid SSE stream, which the reader must skip.
NOISE = st.sampled_from([b": keep-alive\n\n", b"event: ping\n", b"id: 7\r\n", b"retry: 100\n", b"\n", b"\r\n",
                         b": \xff\xfe not utf-8\n"])


# Stream chunks, usual and not: any member may be missing or of another type, integers reach
# past 64 bits (which orjson reads as floats), and members the plain reading does not know appear.
SCALAR = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | TEXT
DELTA = st.dictionaries(st.sampled_from(["role", "content", "reasoning_content", "tool_calls"]), SCALAR | JSON, max_size=3)
CHOICE = st.fixed_dictionaries({}, optional={"index": SCALAR, "delta": DELTA | SCALAR, "finish_reason": SCALAR,
                                             "usage": JSON, "logprobs": JSON})
CHUNK = st.fixed_dictionaries({}, optional={"id": SCALAR, "object": SCALAR, "created": SCALAR, "model": SCALAR,
                                            "choices": st.lists(CHOICE, max_size=2) | SCALAR, "usage": JSON,
                                            "error": JSON, "system_fingerprint": SCALAR})


def data_lines(read, max_line_bytes: int = 1 << 20) -> list[bytes]:
    """Every payload `DataLines` finds in what `read` hands out until b""."""
    lines, payloads = DataLines(max_line_bytes), []
    while block := read():
        payloads += lines.feed(block)
    return payloads


def feed(data: bytes, cuts: list[int]):
    """A `read` callable handing out `data` in pieces cut at the given offsets, then b""."""
    bounds = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    pieces.reverse()
    return lambda: pieces.pop() if pieces else b""


@given(payloads=st.lists(st.dictionaries(TEXT, JSON, max_size=5), max_size=8),
       noise=st.lists(NOISE, max_size=8), crlf=st.booleans(), cuts=st.lists(st.integers(0, 10 ** 6), max_size=40))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_the_reader_yields_every_event_the_writer_wrote_however_the_bytes_are_split(payloads, noise, crlf, cuts):
    stream = b""
    for i, payload in enumerate(payloads):
        written = event(payload)
        assert written.startswith(b"data: ") and written.endswith(b"\n\n") and written.count(b"\n") == 2
        stream += (written.replace(b"\n\n", b"\r\n\r\n") if crlf else written) + (noise[i] if i < len(noise) else b"")
    read = data_lines(feed(stream, cuts))
    assert [json.loads(data) for data in read] == payloads


@given(line=st.binary(min_size=1, max_size=5000).filter(lambda b: b"\n" not in b), limit=st.integers(1, 4000),
       cuts=st.lists(st.integers(0, 10 ** 6), max_size=20), terminated=st.booleans())
def test_a_line_longer_than_the_limit_is_refused_and_others_pass(line, limit, cuts, terminated):
    data = b"data: " + line + (b"\n" if terminated else b"")
    read = feed(data, cuts)
    if len(data.rstrip(b"\n")) > limit:
        with pytest.raises(LineTooLong):
            data_lines(read, limit)
    else:
        assert data_lines(read, limit) == ([line.strip()] if terminated else [])


def test_the_lines_before_a_line_too_long_in_the_same_block_come_with_the_refusal():
    with pytest.raises(LineTooLong) as refused:
        DataLines(50).feed(b"data: a\n: comment\ndata: b\ndata: " + b"x" * 100 + b"\ndata: c\n")
    assert refused.value.payloads == [b"a", b"b"]


def test_a_long_line_costs_linear_time():
    """40 MB without a newline, a byte block at a time, used to take seconds (quadratic
    concatenation); capped, it stops at the cap, and uncapped it is still quick."""
    blocks = [b"x" * 4096] * 10_000
    reader = iter(blocks)
    with pytest.raises(LineTooLong):
        data_lines(lambda: next(reader, b""), max_line_bytes=1 << 20)
    reader = iter(blocks + [b"\n"])
    assert data_lines(lambda: next(reader, b""), max_line_bytes=1 << 30) == []


@given(payload=st.binary(max_size=40).filter(lambda data: b"\n" not in data), ends=st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n", b""]),
       field=st.sampled_from([b"data:", b"data: ", b"event:", b": ", b"dat"]), partial=st.binary(max_size=3),
       limit=st.sampled_from([4, 1 << 20]))
@settings(max_examples=300)
def test_a_whole_event_is_read_in_one_step_as_feed_reads_it(payload, ends, field, partial, limit):
    block = field + payload + ends
    quick, general = DataLines(limit), DataLines(limit)
    assert quick.feed(partial) == general.feed(partial)  # a line left pending, or not
    whole = quick.whole_event(block)
    if whole is None:
        return
    # In two pieces, the general reading (the first piece holds no line end, so it is kept as a partial line).
    assert [whole] == general.feed(block[:1]) + general.feed(block[1:])


@given(TEXT)
def test_a_text_event_is_the_event_of_its_object(text):
    assert text_event(b'{"content":', text) == event({"content": text})
    assert text_event(b'{"content":"","reasoning":', text) == event({"content": "", "reasoning": text})


@given(body=CHUNK, ascii_only=st.booleans())
@settings(max_examples=500)
def test_the_plain_reading_of_a_chunk_is_the_general_one(body, ascii_only):
    data = json.dumps(body, ensure_ascii=ascii_only).encode()
    plain = replies.plain_chunk(data)
    if plain is None:
        return
    assert "error" not in body  # an upstream error is the general path's to report
    general = replies.chunk(replies.encodable(json.loads(data)))
    # Compared as JSON text, so an integer read as a float (or 1 as True) would differ.
    assert json.dumps(plain) == json.dumps(general)


def test_the_usual_chunk_is_read_plainly_and_others_generally():
    usual = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1796280547, "model": "kimi-k2.6",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi \u00e9 \U0001f600"},
                          "finish_reason": None}], "usage": None}
    assert replies.plain_chunk(json.dumps(usual).encode()) == usual
    for unusual in (dict(usual, created=2 ** 65), dict(usual, usage={"total_tokens": 3}), dict(usual, error={}),
                    dict(usual, choices=[{"index": 0, "delta": {"content": 1.5}}])):
        assert replies.plain_chunk(json.dumps(unusual).encode()) is None
    for raw in (b'{"choices": [{"delta": {"content": "\\ud800"}}]}', b'{"created": NaN}', b"[" * 2000, b"{"):
        assert replies.plain_chunk(raw) is None


def test_a_chunk_whose_model_is_not_an_id_is_read_with_none_there_on_both_paths():
    for value in (["kimi-k2.6"], {"id": "kimi-k2.6"}, 5, True, None, "not an id!"):
        body = {"model": value, "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
        assert replies.chunk(json.loads(json.dumps(body)))["model"] is None
        plain = replies.plain_chunk(json.dumps(body).encode())
        assert plain is None or plain["model"] is None
    body = {"model": "kimi-k2.6", "choices": []}
    assert replies.chunk(dict(body))["model"] == replies.plain_chunk(json.dumps(body).encode())["model"] == "kimi-k2.6"


def general_texts(payload: bytes):
    """What the relay counts and sends for a payload read in full: the first choice's texts,
    and the tally's usage, finish reason and text size after it."""
    chunk = replies.plain_chunk(payload)
    if chunk is None:
        try:
            chunk = replies.chunk(replies.encodable(json.loads(payload)))
        except (ValueError, replies.UnusableReply):
            return None
    tally = replies.StreamTally()
    tally.add(chunk)
    return list(replies.first_choice_texts(chunk)), tally.usage, tally.finish_reason, tally.text_bytes


# Middles that try to leave the string a learnt shape expects: a closing quote followed by more
# members, another choice, an escaped quote at the end, a number, nothing, JSON with spaces.
MIDDLES = st.sampled_from([b'"a","role":"x"', b'"a"},{"index":1,"delta":{"content":"b"', b'"a\\"', b'"a\\\"',
                           b'12', b'""', b' "spaced" ', b'"\ud800"', b'"\ud83d\ude00"', b'null', b'"a" "b"',
                           b'["a"]', b'"\u0022"'])


@given(first=TEXT.filter(bool), kind=st.sampled_from(["content", "reasoning_content"]), role=st.booleans(),
       later=st.one_of(TEXT.map(lambda text: json.dumps(text).encode()),
                       TEXT.map(lambda text: json.dumps(text, ensure_ascii=False).encode()), MIDDLES, st.binary(max_size=12)))
@settings(max_examples=500)
def test_a_chunk_read_as_its_text_is_what_reading_it_in_full_gives(first, kind, role, later):
    """A text-only chunk's shape is learnt from one chunk; any later chunk with the same bytes
    around any middle is either read in full (None) or read as text that is exactly what the
    full reading gives: the same event bytes and the same counts."""
    delta = {"role": "assistant"} if role else {}
    delta[kind] = first
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "kimi-k2.6",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    payload = json.dumps(body, ensure_ascii=False).encode()
    templates = replies.TextTemplates()
    templates.learn(payload, replies.plain_chunk(payload))
    assert templates.read(payload)[:2] == ("reasoning" if kind == "reasoning_content" else "content", first)
    start = payload.index(json.dumps(first, ensure_ascii=False).encode(), payload.index(kind.encode()))
    candidate = payload[:start] + later + payload[start + len(json.dumps(first, ensure_ascii=False).encode()):]
    read = templates.read(candidate)
    if read is None:
        return
    texts, usage, finish_reason, text_bytes = general_texts(candidate)
    tally = replies.StreamTally()
    tally.add_text(read.text)
    assert texts == [(read.kind, read.text)]
    assert (usage, finish_reason, text_bytes) == (tally.usage, tally.finish_reason, tally.text_bytes)
    # Both surfaces' events: the same bytes as for the chunk read in full.
    full = replies.plain_chunk(candidate)
    assert full is not None and read.shape.with_text(read.text) == full
    for events in (ContractEvents(), OpenAIEvents(include_usage=False)):
        assert events.text(read) == events.chunk(full)


def test_only_a_text_only_chunk_with_one_choice_teaches_a_shape():
    usual = {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    for unusual in (dict(usual, choices=[]), dict(usual, usage=None) | {"choices": usual["choices"] * 2},
                    {"id": "c", "choices": [{"index": 1, "delta": {"content": "Hi"}, "finish_reason": None}]},
                    {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
                    {"id": "c", "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]},
                    {"id": "c", "choices": [{"index": 0, "delta": {"content": "a", "reasoning_content": "b"}}]},
                    {"id": "content", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}):
        templates = replies.TextTemplates()
        payload = json.dumps(unusual).encode()
        templates.learn(payload, replies.plain_chunk(payload))
        assert templates.read(payload) is None, unusual
    templates = replies.TextTemplates()
    payload = json.dumps(usual).encode()
    templates.learn(payload, replies.plain_chunk(payload))
    assert templates.read(payload.replace(b'"Hi"', b'"there"'))[:2] == ("content", "there")
    assert templates.read(payload.replace(b'"Hi"', b'""')) is None  # empty text: read in full


@given(st.text())
def test_any_upstream_text_becomes_encodable_and_keeps_what_was_valid(text):
    cleaned = replies.encodable(text)
    cleaned.encode("utf-8")
    assert replies.encodable(cleaned) == cleaned
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        assert cleaned == text
    event({"content": cleaned})


@given(before=TEXT, after=TEXT, secret=st.text(st.characters(min_codepoint=48, max_codepoint=122).filter(str.isalnum),
                                               min_size=20, max_size=60),
       form=st.sampled_from(["whole", "bare", "tail", "glued", "head"]))
def test_no_part_of_the_key_that_could_identify_it_survives_redaction(before, after, secret, form):
    key = "sk-" + secret
    shown = {"whole": key, "bare": secret, "tail": secret[-FRAGMENT_CHARS:], "glued": f"invalid_key_{key}",
             "head": secret[:FRAGMENT_CHARS + 2]}[form]
    redacted = KeyRedactor(key)(before + shown + after)
    for i in range(len(secret) - FRAGMENT_CHARS + 1):
        assert secret[i:i + FRAGMENT_CHARS] not in redacted


@given(text=TEXT)
def test_redaction_leaves_text_without_the_key_alone(text):
    key = "sk-" + "QmZ7xV9pL2wR8tY4nB6cD1fG3hJ5kS0a"  # a made-up key, split so scanners do not take it for a real one
    if not any(key[3:][i:i + FRAGMENT_CHARS] in text for i in range(len(key) - 3 - FRAGMENT_CHARS + 1)) \
            and "sk-" not in text.lower() and "bearer" not in text.lower():
        assert KeyRedactor(key)(text) == text


SCHEMAS = [CompletionRequest, HistoryRequest, StreamRequest, OpenAIChatRequest]


def _fields(schema) -> set[str]:
    names = set(schema.model_fields)
    return names | {"messages", "role", "content"}


@pytest.mark.parametrize("schema", SCHEMAS, ids=[schema.__name__ for schema in SCHEMAS])
@given(body=st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "message": JSON, "messages": JSON | st.lists(st.fixed_dictionaries({}, optional={"role": JSON, "content": JSON})),
    "model": JSON, "temperature": JSON, "top_p": JSON, "max_tokens": JSON, "thinking": JSON, "system": JSON})))
@settings(max_examples=200)
def test_validation_answers_every_body_with_a_model_or_a_400_naming_a_real_field(schema, body):
    try:
        parse(schema, json.dumps(body).encode())
    except ApiError as error:
        assert error.status == 400
        assert error.code in ("invalid_json", "invalid_body", "invalid_request")
        if error.code == "invalid_request":
            named = error.message.split("'")[1]
            assert named.split(".")[0] in _fields(schema), error.message


@pytest.mark.parametrize("schema", SCHEMAS, ids=[schema.__name__ for schema in SCHEMAS])
@given(raw=st.binary(max_size=200))
def test_validation_answers_any_bytes_with_a_model_or_a_400(schema, raw):
    try:
        parse(schema, raw)
    except ApiError as error:
        assert error.status == 400 and error.code in ("invalid_json", "invalid_body", "invalid_request")
