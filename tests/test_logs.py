"""One structured log line per request (streams: when the stream ends), with the request
id, never the upstream key, and message contents only with LOG_BODIES."""
from __future__ import annotations

import json
import logging

from kimi_backend.auth import key_fingerprint
from kimi_backend.observability.logs import JsonFormatter
from kimi_backend.streaming import ContractEvents
from kimi_backend.moonshot.models import DEFAULT_MODEL
from tests.conftest import UPSTREAM_KEY


def access_lines(caplog) -> list[dict]:
    """The access records so far, as the JSON objects the formatter writes."""
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records if record.name == "kimi_backend.access"]
    assert all(UPSTREAM_KEY not in line for line in lines)
    return [json.loads(line) for line in lines]


def test_completion_line_has_request_identity_model_tokens_and_upstream(client, caplog):
    caplog.set_level(logging.INFO)
    response = client.post("/api/chat/completion", json={"message": "secret words"},
                           headers={"X-Request-ID": "req-abc.123"})
    [line] = access_lines(caplog)
    usage = response.get_json()["data"]["usage"]
    assert response.headers["X-Request-ID"] == "req-abc.123"
    assert line["request_id"] == "req-abc.123"
    assert (line["method"], line["route"], line["status"], line["outcome"]) == ("POST", "/api/chat/completion", 200, "ok")
    assert line["client"] == "ip:127.0.0.1"
    assert line["model"] == line["requested_model"] == DEFAULT_MODEL
    assert (line["tokens_in"], line["tokens_out"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert line["upstream_ms"] > 0 and line["duration_ms"] >= line["upstream_ms"]
    assert "secret words" not in json.dumps(line) and "messages" not in line


def test_client_key_is_logged_as_its_hash_never_in_clear(make_app, caplog):
    caplog.set_level(logging.INFO)
    client = make_app(REQUIRE_API_KEY="true", VALID_API_KEYS="client-key-1234567890").test_client()
    client.get("/api/chat/models", headers={"x-api-key": "client-key-1234567890"})
    [line] = access_lines(caplog)
    assert line["client"] == f"key:{key_fingerprint('client-key-1234567890')}"
    assert "client-key-1234567890" not in json.dumps(line)


def test_log_bodies_adds_messages_and_reply(make_app, caplog):
    caplog.set_level(logging.INFO)
    client = make_app(LOG_BODIES="true").test_client()
    response = client.post("/api/chat/completion", json={"message": "secret words"})
    [line] = access_lines(caplog)
    assert line["messages"] == [{"role": "user", "content": "secret words"}]
    assert line["reply"] == response.get_json()["data"]["message"]


def test_stream_line_is_written_when_the_stream_ends_with_its_tokens(client, caplog):
    caplog.set_level(logging.INFO)
    response = client.post("/api/chat/stream", json={"messages": "hello sim:chunks=4"}, buffered=False)
    assert response.status_code == 200
    chunks = iter(response.response)
    next(chunks)
    assert access_lines(caplog) == [], "the line must wait for the end of the stream"
    body = b"".join(chunks)
    response.close()
    final = json.loads(body.decode().split("data: ")[-2])
    [line] = access_lines(caplog)
    assert (line["route"], line["status"], line["outcome"]) == ("/api/chat/stream", 200, "ok")
    assert (line["tokens_in"], line["tokens_out"]) == (final["usage"]["prompt_tokens"], final["usage"]["completion_tokens"])
    assert line["request_id"] == response.headers["X-Request-ID"]


def test_stream_closed_by_the_client_is_logged_as_such(client, caplog):
    caplog.set_level(logging.INFO)
    response = client.post("/api/chat/stream", json={"messages": "hello sim:chunks=20"}, buffered=False)
    next(iter(response.response))
    response.close()
    [line] = access_lines(caplog)
    assert line["outcome"] == "client_closed"


def test_a_bug_while_relaying_still_ends_the_stream_in_band_and_logs_it(client, caplog, monkeypatch):
    """A failure inside the relay itself (a bug; here, turning a chunk into events raises)
    ends the stream with an in-band `internal_error` and [DONE], not a cut response; the
    exception is logged and so is the stream's access line."""
    def broken(self, chunk):
        raise RuntimeError("secret internal detail")
    monkeypatch.setattr(ContractEvents, "chunk", broken)
    caplog.set_level(logging.INFO)
    response = client.post("/api/chat/stream", json={"messages": "hello"})
    events = [part[6:] for part in response.get_data(as_text=True).split("\n\n") if part.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["code"] == "internal_error" and "secret internal detail" not in error["error"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert any(record.exc_info and "secret internal detail" in str(record.exc_info[1]) for record in caplog.records)
    [line] = access_lines(caplog)
    assert (line["route"], line["status"], line["outcome"]) == ("/api/chat/stream", 200, "internal_error")


def test_upstream_failure_logs_moonshot_type_and_our_code(make_app, simulator, caplog):
    caplog.set_level(logging.INFO)
    client = make_app(UPSTREAM_MAX_RETRIES="0").test_client()
    simulator.script([{"status": 429, "type": "engine_overloaded_error"}])
    response = client.post("/api/chat/completion", json={"message": "hi"})
    [line] = access_lines(caplog)
    assert response.status_code == 429
    assert (line["status"], line["outcome"], line["upstream_type"]) == (429, "upstream_overloaded", "engine_overloaded_error")


def test_errors_before_the_upstream_log_their_code_and_unknown_routes_stay_unmatched(client, caplog):
    caplog.set_level(logging.INFO)
    client.post("/api/chat/completion", json={"message": ""})
    client.get("/no/such/path")
    bad, missing = access_lines(caplog)
    assert (bad["status"], bad["outcome"]) == (400, "invalid_request")
    assert (missing["status"], missing["route"], missing["path"], missing["outcome"]) == (404, "unmatched", "/no/such/path", "not_found")


class FormattingHandler(logging.Handler):
    """Formats each record as it is emitted (inside the request, as a real handler does)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_every_line_logged_during_a_request_carries_its_id(app):
    @app.get("/boom")
    def boom():
        logging.getLogger("kimi_backend.test").warning("about to fail")
        raise RuntimeError("bug")

    handler = FormattingHandler()
    logging.getLogger("kimi_backend").addHandler(handler)
    try:
        response = app.test_client().get("/boom", headers={"X-Request-ID": "req-boom"})
    finally:
        logging.getLogger("kimi_backend").removeHandler(handler)
    assert response.status_code == 500 and response.get_json()["request_id"] == "req-boom"
    assert [line["logger"] for line in handler.lines] == ["kimi_backend.test", "kimi_backend", "kimi_backend.access"]
    assert all(line["request_id"] == "req-boom" for line in handler.lines)
    assert "RuntimeError" in handler.lines[1]["exc"]
    assert handler.lines[2]["outcome"] == "internal_error"


def test_a_line_is_one_json_object_whatever_its_fields_hold():
    # orjson writes the usual line; what it refuses (an integer past 64 bits, a lone surrogate
    # in a text) is written by json instead, never lost, and anything else becomes its str().
    formatter = JsonFormatter()

    def line(fields: dict) -> dict:
        record = logging.LogRecord("kimi_backend.access", logging.INFO, __file__, 1, "request", None, None)
        record.fields = fields
        text = formatter.format(record)
        assert "\n" not in text
        return json.loads(text)
    usual = line({"client": "sub:訪客", "tokens_in": 3, "duration_ms": 1.5, "reply": "a\u2028b\x00"})
    assert usual["client"] == "sub:訪客" and usual["tokens_in"] == 3 and usual["reply"] == "a\u2028b\x00"
    assert usual["message"] == "request" and usual["level"] == "info" and usual["ts"].endswith("+00:00")
    assert line({"tokens_in": 2 ** 70})["tokens_in"] == 2 ** 70
    assert line({"reply": "x\ud800y"})["reply"] == "x\ud800y"
    assert line({"odd": b"raw"})["odd"] == "b'raw'"
    assert '"client":"sub:訪客"' in formatter.format(
        logging.makeLogRecord({"name": "n", "levelno": 20, "levelname": "INFO", "msg": "m", "fields": {"client": "sub:訪客"}}))
