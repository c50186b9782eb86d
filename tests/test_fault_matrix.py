"""Nothing the upstream does can break a reply: every chat route, streamed and not, against
every kind of upstream fault the simulator can play (its `script` controls), under the real
gunicorn. For each: the documented status and code (or, once a stream has started, an in-band
error event and then `[DONE]`), the request's access line with that outcome, the upstream
connection released, `/health` answering all the while, the active-streams gauge back to zero,
and the key nowhere.

A route is one `Surface`: adding one (another API surface) is one entry in SURFACES.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UPSTREAM_KEY
from tests.helpers import free_port, wait_until
from tests.servers import Service

READ_TIMEOUT_S = 1.0
COMPLETION_TIMEOUT_S = 1.5
MAX_REPLY_BYTES = 200_000
# Every form of the key a leak could take: whole, without its prefix, its tail.
KEY_FORMS = (UPSTREAM_KEY, UPSTREAM_KEY.removeprefix("sk-"), UPSTREAM_KEY[-10:])


@dataclass(frozen=True)
class Surface:
    """One chat route as a client sees it: how to ask, and where its errors put their code."""

    name: str
    path: str
    streamed: bool
    body: Callable[[str], dict]
    error_code: Callable[[dict], str]  # the code in a JSON error body
    event_error_code: Callable[[dict], str | None]  # the code of an in-band error event, or None
    model_not_found_status: int = 400


def _ours(body: dict) -> str:
    return body["code"]


def _ours_in_band(event: dict) -> str | None:
    return event.get("code") if "error" in event else None


def _openai(body: dict) -> str:
    return body["error"]["code"]


def _openai_in_band(event: dict) -> str | None:
    return event["error"]["code"] if isinstance(event.get("error"), dict) else None


def _turns(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


SURFACES = [
    Surface("completion", "/api/chat/completion", False, lambda text: {"message": text}, _ours, _ours_in_band),
    Surface("history", "/api/chat/history", False, lambda text: {"messages": _turns(text)}, _ours, _ours_in_band),
    Surface("stream", "/api/chat/stream", True, lambda text: {"messages": text}, _ours, _ours_in_band),
    Surface("v1", "/v1/chat/completions", False, lambda text: {"messages": _turns(text)}, _openai, _openai_in_band,
            model_not_found_status=404),
    Surface("v1-stream", "/v1/chat/completions", True, lambda text: {"messages": _turns(text), "stream": True},
            _openai, _openai_in_band, model_not_found_status=404),
]

OK = (200, None)


@dataclass(frozen=True)
class Fault:
    """What the upstream does (a simulator script item, per mode) and what the client must see:
    (status, code) for a non-streamed reply and for a stream. A stream's status 200 with a code
    is an in-band error event then [DONE]; (200, None) is a complete, successful reply."""

    name: str
    plain: dict
    streamed: dict
    plain_expect: tuple[int, str | None]
    stream_expect: tuple[int, str | None]


def _both(name: str, item: dict, status: int, code: str | None) -> Fault:
    return Fault(name, item, item, (status, code), (status, code))


FAULTS = [
    # Moonshot's error types, refused before any byte of a reply.
    _both("invalid request", {"status": 400, "type": "invalid_request_error"}, 400, "upstream_rejected"),
    _both("content filter", {"status": 400, "type": "content_filter"}, 400, "content_filter"),
    _both("invalid authentication", {"status": 401, "type": "invalid_authentication_error"}, 502, "upstream_auth_failed"),
    _both("incorrect api key", {"status": 401, "type": "incorrect_api_key_error"}, 502, "upstream_auth_failed"),
    _both("permission denied", {"status": 403, "type": "permission_denied_error"}, 502, "upstream_auth_failed"),
    _both("quota as 403", {"status": 403, "type": "exceeded_current_quota_error"}, 429, "upstream_quota_exceeded"),
    _both("quota as 429", {"status": 429, "type": "exceeded_current_quota_error"}, 429, "upstream_quota_exceeded"),
    _both("model not found", {"status": 404, "type": "resource_not_found_error"}, 400, "model_not_found"),
    _both("rate limit", {"status": 429, "type": "rate_limit_reached_error", "retry_after": 2}, 429, "upstream_rate_limited"),
    _both("overloaded", {"status": 429, "type": "engine_overloaded_error"}, 429, "upstream_overloaded"),
    _both("Retry-After inf", {"status": 429, "type": "rate_limit_reached_error", "retry_after_header": "inf"},
          429, "upstream_rate_limited"),
    _both("Retry-After 1e400", {"status": 429, "type": "rate_limit_reached_error", "retry_after_header": "1e400"},
          429, "upstream_rate_limited"),
    _both("retry after a 400-digit number", {"status": 429, "type": "rate_limit_reached_error",
                                             "message": f"please try again after {'9' * 400} seconds"},
          429, "upstream_rate_limited"),
    _both("unknown error type", {"status": 400, "type": "x" * 500}, 400, "upstream_rejected"),
    _both("server error", {"status": 500, "type": "server_error"}, 502, "upstream_error"),
    _both("unexpected output", {"status": 500, "type": "unexpected_output"}, 502, "upstream_error"),
    _both("503", {"status": 503}, 502, "upstream_error"),
    _both("HTML 502 page", {"status": 502, "html": True}, 502, "upstream_error"),
    _both("HTML 504 page", {"status": 504, "html": True}, 504, "upstream_timeout"),
    # Timeouts before the first byte and between bytes.
    _both("silent before the headers", {"delay": 3}, 504, "upstream_timeout"),
    Fault("silent mid-reply", {"body": "stall"}, {"first_delay": 3}, (504, "upstream_timeout"), (200, "upstream_timeout")),
    Fault("never-ending drip", {"body": "drip", "interval": 0.05}, {"drip": 0.05},
          (504, "upstream_timeout"), (200, "upstream_timeout")),
    # Broken bodies and streams.
    Fault("reset mid-reply", {"body": "cut"}, {"break_after": 2}, (502, "upstream_disconnected"), (200, "upstream_disconnected")),
    Fault("ends without [DONE]", {"body": "cut"}, {"no_done": True}, (502, "upstream_disconnected"), (200, "upstream_incomplete")),
    Fault("malformed JSON", {"body": "malformed"}, {"malformed_after": 2}, (502, "upstream_malformed"), (200, "upstream_malformed")),
    Fault("JSON of another shape", {"odd": "number_content"}, {"misshapen_after": 2},
          (502, "upstream_malformed"), (200, "upstream_malformed")),
    Fault("non-SSE lines in the stream", {}, {"garbage_after": 2}, OK, OK),
    Fault("error event mid-stream", {"status": 500}, {"error_after": 2}, (502, "upstream_error"), (200, "upstream_error")),
    Fault("one endless line", {"repeat": 20000}, {"endless_line": True},
          (502, "upstream_reply_too_large"), (200, "upstream_reply_too_large")),
    Fault("a huge reply", {"repeat": 20000}, {"repeat": 20000},
          (502, "upstream_reply_too_large"), (200, "upstream_reply_too_large")),
    Fault("[DONE] then silence", {}, {"done_then_silence": True}, OK, OK),
    # Odd but valid JSON.
    _both("negative token counts", {"odd": "negative_usage"}, *OK),
    _both("astronomical token counts", {"odd": "huge_usage"}, *OK),
    _both("token counts as floats and strings", {"odd": "float_usage"}, *OK),
    _both("a lone surrogate in the text", {"odd": "surrogate"}, *OK),
    _both("content as a list of parts", {"odd": "list_content"}, *OK),
    _both("null content", {"odd": "null_content"}, *OK),
    _both("a made-up model id", {"odd": "odd_model"}, *OK),
    # The upstream quoting our key back, in every shape.
    *[Fault(f"key echoed {echo}", {"status": 400, "echo_key": echo}, {"error_after": 1, "echo_key": echo},
            (400, "upstream_rejected"), (200, "upstream_error")) for echo in ("plain", "glued", "bare", "tail")],
    *[_both(f"key echoed in a 404 {echo}", {"status": 404, "echo_key": echo}, 400, "model_not_found")
      for echo in ("plain", "glued", "bare", "tail")],
]


@pytest.fixture(scope="module")
def service(simulator_server):
    svc = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url, UPSTREAM_MAX_RETRIES="0",
                  UPSTREAM_READ_TIMEOUT_S=str(READ_TIMEOUT_S), UPSTREAM_COMPLETION_TIMEOUT_S=str(COMPLETION_TIMEOUT_S),
                  UPSTREAM_CONNECT_TIMEOUT_S="0.5", UPSTREAM_MAX_REPLY_BYTES=str(MAX_REPLY_BYTES),
                  UPSTREAM_MAX_LINE_BYTES="65536", SSE_KEEPALIVE_S="0.2", RATE_LIMIT_MAX_REQUESTS="100000",
                  MAX_CONNECTIONS_PER_IP="1000")
    yield svc
    svc.stop()
    log = svc.log()
    assert not [form for form in KEY_FORMS if form in log], "the key (or part of it) reached the service's log"


class HealthWatch:
    """Asks /health every 50 ms on its own connection while a fault plays; every answer must
    be a quick 200 (one worker serves everything, so a stuck worker shows here)."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                status = requests.get(self.url + "/health", timeout=2).status_code
            except requests.RequestException:
                status = 0
            self.answers.append((status, time.monotonic() - started))
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        assert self.answers, "/health was never asked"
        assert all(status == 200 for status, _ in self.answers), self.answers
        assert max(took for _, took in self.answers) < 1.0, self.answers


def call(service: Service, surface: Surface) -> tuple[int, dict, list[dict | str], bytes]:
    """One request: status, headers, the parsed body (a JSON object, or a stream's data events) and the raw body."""
    response = requests.post(service.url + surface.path, json=surface.body("hello"), timeout=30)
    raw = response.content
    if response.headers.get("Content-Type", "").startswith("text/event-stream"):
        events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
        return response.status_code, response.headers, [e if e == "[DONE]" else json.loads(e) for e in events], raw
    return response.status_code, response.headers, response.json(), raw


def active_streams(service: Service) -> float:
    text = requests.get(service.url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kimi_active_streams":
                return sample.value
    return 0.0


def access_line(service: Service, request_id: str) -> dict | None:
    """The access line the service wrote for one request, once it is there."""
    for line in service.log().splitlines():
        if request_id in line:
            record = json.loads(line)
            if record.get("logger") == "kimi_backend.access":
                return record
    return None


def check_outcome(surface: Surface, fault: Fault, status: int, headers, body) -> None:
    """The documented status and code, or the in-band error and [DONE]."""
    expected_status, expected_code = fault.stream_expect if surface.streamed else fault.plain_expect
    if expected_code == "model_not_found":
        expected_status = surface.model_not_found_status
    if expected_status != 200:
        assert status == expected_status, body
        assert surface.error_code(body) == expected_code, body
        if expected_status == 429:
            assert 1 <= int(headers["Retry-After"]) <= 3600
        return
    assert status == 200, body
    if not surface.streamed:
        if "data" in body:
            assert isinstance(body["data"]["message"], str)
        else:  # OpenAI's shape: content is text, or null (a reply of tool calls only)
            assert isinstance(body["choices"][0]["message"]["content"], (str, type(None)))
        return
    assert body[-1] == "[DONE]", body[-3:]
    in_band = [surface.event_error_code(event) for event in body[:-1] if isinstance(event, dict)]
    errors = [code for code in in_band if code]
    assert errors == ([expected_code] if expected_code else []), body[-3:]
    if expected_code:
        assert surface.event_error_code(body[-2]) == expected_code, "the error is the last event before [DONE]"


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
@pytest.mark.parametrize("surface", SURFACES, ids=[surface.name for surface in SURFACES])
def test_upstream_fault(service, simulator, surface, fault):
    simulator.script([fault.streamed if surface.streamed else fault.plain])
    with HealthWatch(service.url):
        status, headers, body, raw = call(service, surface)
    check_outcome(surface, fault, status, headers, body)
    line = wait_until(lambda: access_line(service, headers["X-Request-ID"]), timeout=3, message="the access line")
    expected_code = (fault.stream_expect if surface.streamed else fault.plain_expect)[1]
    assert (line["status"], line["outcome"]) == (status, expected_code or "ok"), line
    text = raw.decode("utf-8") + str(headers)  # our bytes are always valid UTF-8
    assert not [form for form in KEY_FORMS if form in text], text[-500:]
    wait_until(lambda: simulator.stats()["in_flight"] == 0, timeout=3, message="the upstream connection to be released")
    wait_until(lambda: active_streams(service) == 0, timeout=3, message="the active-streams gauge to return to zero")


def test_odd_replies_reach_clients_in_a_usable_form(service, simulator):
    """Usage that cannot be counted becomes null (never a negative or astronomical count), a
    lone surrogate becomes U+FFFD, content parts become text."""
    for odd, check in (("negative_usage", lambda data: data["usage"] is None),
                       ("huge_usage", lambda data: data["usage"] is None),
                       ("surrogate", lambda data: data["message"].endswith("\ufffd")),
                       ("list_content", lambda data: data["message"].startswith("[offline simulator]"))):
        simulator.script([{"odd": odd}])
        data = requests.post(service.url + "/api/chat/completion", json={"message": "hi"}, timeout=10).json()["data"]
        assert check(data), (odd, data)


def test_made_up_model_ids_do_not_grow_the_metrics(service, simulator):
    simulator.script([{"odd": "odd_model"}] * 5)
    for _ in range(5):
        assert requests.post(service.url + "/api/chat/completion", json={"message": "hi"}, timeout=10).status_code == 200
    text = requests.get(service.url + "/metrics", timeout=5).text
    assert "odd-" not in text
    assert 'model="other"' in text


@pytest.fixture(scope="module")
def refused_service():
    """The service pointed at a port nothing listens on."""
    svc = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", UPSTREAM_MAX_RETRIES="0")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def blackhole():
    """A listener whose accept queue is full, so new connections to it are never accepted:
    the upstream a connect timeout meets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []

    def full() -> bool:
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
            held.append(probe)
            return False
        except OSError:
            probe.close()
            return True
    wait_until(full, timeout=10, message="the listener's queue to fill")
    yield port
    for sock in held:
        sock.close()
    listener.close()


@pytest.fixture(scope="module")
def unreachable_service(blackhole):
    svc = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=f"http://127.0.0.1:{blackhole}/v1", UPSTREAM_MAX_RETRIES="0",
                  UPSTREAM_CONNECT_TIMEOUT_S="0.5")
    yield svc
    svc.stop()


@pytest.mark.parametrize("surface", SURFACES, ids=[surface.name for surface in SURFACES])
@pytest.mark.parametrize("which", ["refused", "connect timeout"])
def test_unreachable_upstream(request, surface, which):
    service = request.getfixturevalue("refused_service" if which == "refused" else "unreachable_service")
    with HealthWatch(service.url):
        status, _, body, raw = call(service, surface)
    assert status == 503 and surface.error_code(body) == "upstream_unavailable", body
    assert UPSTREAM_KEY not in raw.decode()
