"""The simulator's WSGI app: routes Moonshot's two API paths and the test control paths
(`/_sim/stats`, `/_sim/reset`, `/_sim/script`), applies each request's behaviour and keeps the
counters tests read. Plain WSGI, no Flask, so it stays cheap per request."""
from __future__ import annotations

import threading
import uuid
from collections import deque
from typing import Iterable

from .directives import HANG_LIMIT_S, Behaviour, make_behaviour, parse_directives
from .errors import DEFAULT_ERROR_TYPE, ERROR_MESSAGES, ApiError, invalid, seconds
from .replies import MODELS, completion_json, echoed_key, make_completion
from .streams import stream_events
from .validation import validate_chat
from .wire import (cut_connection, error_response, faulty_json_response, html_response, json_response,
                   pause_unless_client_left, read_json, request_headers)


def _zero_stats() -> dict:
    """Fresh counters."""
    return {"chat_requests": 0, "stream_requests": 0, "models_requests": 0, "streams_started": 0,
            "streams_completed": 0, "streams_aborted": 0, "open_streams": 0, "in_flight": 0,
            "abandoned_before_headers": 0, "last_request": None}


class Simulator:
    """The WSGI app. Stats and the script queue are shared, directives are per request."""

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self._lock = threading.Lock()
        self._stats = _zero_stats()
        self._script: deque[Behaviour] = deque()
        self._models_script: deque[Behaviour] = deque()
        self._released = threading.Event()  # set on server stop, so hung requests let go
        # False: answer /v1/models with a 404, like OpenAI-compatible servers that have no list.
        self.serves_models = True
        self._routes = {"/v1/chat/completions": ("POST", self._chat), "/v1/models": ("GET", self._models),
                        "/_sim/stats": ("GET", self._control_stats), "/_sim/reset": ("POST", self._control_reset),
                        "/_sim/script": ("POST", self._control_script)}

    # -- control surface

    def stats(self) -> dict:
        """A consistent snapshot of the counters (last_request dicts are never mutated once stored)."""
        with self._lock:
            return dict(self._stats)

    def reset(self) -> None:
        """Zeroes the counters, clears the script queue and serves /v1/models again; open_streams
        stays, as it is a live gauge."""
        with self._lock:
            open_streams, in_flight = self._stats["open_streams"], self._stats["in_flight"]
            self._stats = _zero_stats()
            self._stats["open_streams"] = open_streams
            self._stats["in_flight"] = in_flight
            self._script.clear()
            self._models_script.clear()
        self.serves_models = True

    def script(self, responses: list[dict]) -> None:
        """Queues behaviours for the next chat requests, one each, in order.

        Items take the directive names as keys, e.g. {"status": 503, "retry_after": 1} or {} for a
        normal reply; a scripted item replaces the request's own directives.
        """
        self._enqueue(self._script, responses)

    def script_models(self, responses: list[dict]) -> None:
        """Queues behaviours for the next `/v1/models` requests (status, delay, hang, body)."""
        self._enqueue(self._models_script, responses)

    def _enqueue(self, queue: deque[Behaviour], responses: list[dict]) -> None:
        """Checks every item before queueing any, so a bad script changes nothing."""
        if not isinstance(responses, list) or not all(isinstance(r, dict) for r in responses):
            raise ValueError("responses must be a list of objects")
        behaviours = [make_behaviour(r) for r in responses]
        with self._lock:
            queue.extend(behaviours)

    def _count(self, **deltas: int) -> None:
        """Adds to counters under the lock."""
        with self._lock:
            for key, delta in deltas.items():
                self._stats[key] += delta

    def release_waiters(self) -> None:
        """Ends every sim:hang early (used when the server stops)."""
        self._released.set()

    # -- WSGI

    def __call__(self, environ, start_response):
        """Routes one request; every failure leaves as a Moonshot-shaped error."""
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        try:
            if path not in self._routes:
                raise ApiError(404, "resource_not_found_error", f"Not found the url {path}")
            allowed, handler = self._routes[path]
            if method != allowed:
                return error_response(start_response, ApiError(
                    405, "invalid_request_error", f"Method {method} is not allowed for {path}"), [("Allow", allowed)])
            body = read_json(environ) if method == "POST" else None
            if path.startswith("/_sim/"):  # polling the control endpoints must not hide the real request
                return handler(environ, start_response, body)
            record = {"path": path, "body": body, "headers": request_headers(environ)}
            with self._lock:
                self._stats["last_request"] = record
        except ApiError as error:
            return error_response(start_response, error)
        return self._in_flight(handler, environ, start_response, body)

    def _in_flight(self, handler, environ, start_response, body):
        """Serves an API request, counted in `in_flight` until its reply is over (sent, cut,
        or abandoned by the client), so tests can see that a caller let go of the connection."""
        self._count(in_flight=1)
        try:
            reply = handler(environ, start_response, body)
        except ApiError as error:
            reply = error_response(start_response, error)
        except BaseException:
            self._count(in_flight=-1)
            raise
        return self._until_done(reply)

    def _until_done(self, reply):
        try:
            yield from reply
        finally:
            close = getattr(reply, "close", None)
            if close is not None:
                close()
            self._count(in_flight=-1)

    def _authorize(self, environ) -> None:
        """Bearer key check: exact match when configured, else any `sk-` key."""
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        key = key.strip()
        valid = key == self.api_key if self.api_key else key.startswith("sk-")
        if scheme.lower() != "bearer" or not valid:
            raise ApiError(401, "invalid_authentication_error", "Invalid Authentication")

    def _models(self, environ, start_response, _body):
        """GET /v1/models, shaped by the next `script_models` item when there is one."""
        self._count(models_requests=1)
        if not self.serves_models:
            raise ApiError(404, "resource_not_found_error", "Not found the url /v1/models")
        self._authorize(environ)
        with self._lock:
            behaviour = self._models_script.popleft() if self._models_script else Behaviour()
        self._wait(behaviour, environ)
        if behaviour.status is not None:
            raise ApiError(behaviour.status, behaviour.type or DEFAULT_ERROR_TYPE.get(behaviour.status, "server_error"),
                           behaviour.message or "Simulated error", behaviour.retry_after)
        payload = {"object": "list", "data": MODELS}
        if behaviour.body:
            return self._play(faulty_json_response(start_response, payload, behaviour), environ, stream=False)
        return json_response(start_response, 200, payload)

    def _wait(self, behaviour: Behaviour, environ: dict) -> None:
        """sim:hang and sim:delay: silence before the status line. A delay ends early when the
        caller hangs up (as Moonshot stops work on a request nobody waits for)."""
        if behaviour.hang:
            # An Event instead of a sleep loop: one wake-up per hung request (cheap under load), and stop() ends it.
            self._released.wait(HANG_LIMIT_S)
            raise ApiError(504, "server_error", "Gateway timeout (simulated hang)")
        if behaviour.delay and not pause_unless_client_left(behaviour.delay, environ):
            self._count(abandoned_before_headers=1)
            raise ApiError(499, "invalid_request_error", "The caller closed the connection (simulated)")

    def _chat(self, environ, start_response, body):
        """POST /v1/chat/completions: validate, apply the behaviour, answer as JSON or SSE."""
        streaming = isinstance(body, dict) and body.get("stream") is True
        self._count(chat_requests=1, stream_requests=int(streaming))
        self._authorize(environ)
        request = validate_chat(body)
        with self._lock:
            behaviour = self._script.popleft() if self._script else None
        if behaviour is None:
            try:
                behaviour = make_behaviour(parse_directives(request.last_user_text))
            except ValueError as exc:
                raise invalid(f"Invalid request: {exc}") from None
        self._wait(behaviour, environ)
        echoed = echoed_key(environ["HTTP_AUTHORIZATION"].partition(" ")[2].strip(), behaviour.echo_key) \
            if behaviour.echo_key else None
        if behaviour.status is not None:
            error_type = behaviour.type or DEFAULT_ERROR_TYPE.get(
                behaviour.status, "server_error" if behaviour.status >= 500 else "invalid_request_error")
            message = echoed or behaviour.message or ERROR_MESSAGES.get(error_type, "Simulated error").format(
                model=request.model, retry=seconds(behaviour.retry_after or 1))
            if behaviour.html:
                return html_response(start_response, behaviour.status)
            headers = [("Retry-After", behaviour.retry_after_header)] if behaviour.retry_after_header else []
            return error_response(start_response, ApiError(behaviour.status, error_type, message, behaviour.retry_after),
                                  headers)
        completion = make_completion(request, behaviour)
        if not request.stream:
            if behaviour.body:
                return self._play(faulty_json_response(start_response, completion_json(completion), behaviour),
                                  environ, stream=False)
            return json_response(start_response, 200, completion_json(completion))
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                                  ("Msh-Request-Id", str(uuid.uuid4()))])
        events = stream_events(completion, behaviour, request.include_usage, echoed or behaviour.message)
        return self._play(events, environ)

    def _play(self, events: Iterable[tuple[float, bytes | None]], environ: dict, stream: bool = True):
        """Yields a reply's pieces one per iteration, pausing before each as planned, and counts
        how a stream ended. `events` is a list, or an endless iterator (never complete).

        A plain generator outside any reference cycle, so its `finally` runs on close() (the server
        noticed the client left) and, should a server skip close(), as soon as the server drops it.
        """
        if stream:
            self._count(streams_started=1, open_streams=1)
        last = len(events) - 1 if isinstance(events, list) else -1
        finished = False
        try:
            for i, (pause, data) in enumerate(events):
                if pause and not pause_unless_client_left(pause, environ):
                    return
                finished = i == last  # the planned end counts as complete even if cut
                if data is None:
                    cut_connection(environ)
                if data:  # b"" only marks a pause: written, it would end a chunked body
                    yield data
        finally:
            if stream:
                self._count(open_streams=-1, **{"streams_completed" if finished else "streams_aborted": 1})

    # -- control endpoints (no auth: tests only)

    def _control_stats(self, _environ, start_response, _body):
        """GET /_sim/stats."""
        return json_response(start_response, 200, self.stats())

    def _control_reset(self, _environ, start_response, _body):
        """POST /_sim/reset."""
        self.reset()
        return json_response(start_response, 200, {"ok": True})

    def _control_script(self, _environ, start_response, body):
        """POST /_sim/script with {"responses": [...]}."""
        try:
            self.script(body.get("responses") if isinstance(body, dict) else None)
        except ValueError as exc:
            raise invalid(f"Invalid request: {exc}") from None
        return json_response(start_response, 200, {"ok": True})
