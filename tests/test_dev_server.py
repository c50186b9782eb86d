"""`make dev` serves the app with Flask's development server (werkzeug), whose raw request input
runs on past the body: request bodies, sized or chunked, are still read to their end."""
from __future__ import annotations

import threading

import pytest
import requests
from werkzeug.serving import make_server


@pytest.fixture
def dev_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


def test_sized_and_chunked_bodies_are_read_to_their_end(dev_server, simulator):
    sized = requests.post(dev_server + "/api/chat/completion", json={"message": "sized"}, timeout=10)
    assert sized.status_code == 200 and sized.json()["data"]["message"].endswith("You said: sized")
    chunked = requests.post(dev_server + "/api/chat/completion", data=iter([b'{"message": ', b'"chunked"}']),
                            headers={"Content-Type": "application/json"}, timeout=10)
    assert chunked.status_code == 200 and chunked.json()["data"]["message"].endswith("You said: chunked")
