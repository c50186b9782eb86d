"""kimi_backend/responses.py's KimiResponse: the headers a server gets are werkzeug's own,
for every case werkzeug changes something, and the response's own when it would not."""
from __future__ import annotations

import pytest
from flask import Response
from werkzeug.test import create_environ

from kimi_backend.responses import KimiResponse


def stream():
    yield b"data: 1\n\n"


CASES = {
    "a JSON reply": dict(response='{"ok":true}', mimetype="application/json", headers={"X-Request-ID": "abc"}),
    "a stream": dict(response=stream, mimetype="text/event-stream", headers={"Cache-Control": "no-cache"}),
    "a relative Location": dict(response="", status=302, headers={"Location": "/api/info"}),
    "a Location with non-ASCII": dict(response="", status=302, headers={"location": "/聊天?q=ü"}),
    "a Content-Location": dict(response="x", headers={"Content-Location": "/docs/ü"}),
    "204 with a Content-Length": dict(response="", status=204, headers={"Content-Length": "0"}),
    "304 with entity headers": dict(response="", status=304, headers={"Content-Type": "text/plain", "Expires": "0",
                                                                    "Content-Length": "5", "ETag": '"a"'}),
    "101": dict(response="", status=101, headers={"Upgrade": "websocket"}),
    "a sequence without its length": dict(response=[b"ab", b"cd"], headers={"X-A": "1"}),
    "a length set by hand": dict(response=[b"ab"], headers={"Content-Length": "2"}),
    "404 JSON": dict(response='{"success":false}', status=404, mimetype="application/json"),
}


def build(cls, case):
    spec = dict(CASES[case])
    if callable(spec["response"]):
        spec["response"] = spec["response"]()
    return cls(**spec)  # a list body ("a sequence without its length") gets no Content-Length here


@pytest.mark.parametrize("case", CASES)
def test_the_server_gets_werkzeugs_headers(case):
    environ = create_environ("/api/chat/completion", "http://localhost/")
    ours = build(KimiResponse, case).get_wsgi_response(environ)
    theirs = build(Response, case).get_wsgi_response(environ)
    assert ours[1:] == theirs[1:]


def test_a_plain_reply_hands_over_its_own_headers_without_a_copy():
    response = KimiResponse('{"ok":true}', mimetype="application/json")
    assert response.get_wsgi_headers(create_environ()) is response.headers
    stream_response = KimiResponse(stream(), mimetype="text/event-stream")
    assert stream_response.get_wsgi_headers(create_environ()) is stream_response.headers
    redirect = KimiResponse("", status=302, headers={"Location": "/x"})
    assert redirect.get_wsgi_headers(create_environ()) is not redirect.headers  # werkzeug's copy, fixed


def test_the_app_and_its_streams_answer_with_it(make_app):
    from flask import jsonify

    from kimi_backend.api.chat import sse_response
    app = make_app()
    assert app.response_class is KimiResponse
    with app.test_request_context():
        assert isinstance(jsonify(ok=True), KimiResponse)
        assert isinstance(sse_response(stream()), KimiResponse)
