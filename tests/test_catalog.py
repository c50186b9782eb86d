"""The model list (catalog.py) when the upstream's `/models` misbehaves: a silent upstream
holds one refresh for at most FETCH_TIMEOUT_S while every other caller is answered at once
from the list in hand; a broken body means the fallback list, never a 500."""
from __future__ import annotations

import threading
import time

import pytest

from kimi_backend.catalog import FETCH_TIMEOUT_S
from kimi_backend.moonshot.models import CURRENT
from tests.helpers import wait_until


def test_a_silent_models_route_holds_nobody_but_the_one_refresh(make_app, simulator):
    app = make_app()
    simulator.script_models([{"delay": FETCH_TIMEOUT_S + 5}])
    timings: dict[str, float] = {}

    def ask(name: str, path: str) -> None:
        started = time.monotonic()
        response = app.test_client().get(path)
        assert response.status_code == 200
        timings[name] = time.monotonic() - started

    refresher = threading.Thread(target=ask, args=("refresher", "/api/chat/models"))
    refresher.start()
    wait_until(lambda: simulator.stats()["in_flight"] == 1, timeout=5, message="the refresher to be waiting on /models")
    others = [threading.Thread(target=ask, args=(f"caller-{i}", path))
              for i, path in enumerate(["/api/info", "/api/chat/models", "/v1/models"] * 3)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(10)
    refresher.join(FETCH_TIMEOUT_S + 5)
    assert len(timings) == 10
    assert max(t for name, t in timings.items() if name != "refresher") < 1.0, timings
    assert timings["refresher"] < FETCH_TIMEOUT_S + 1.5, timings
    models = app.test_client().get("/api/chat/models").get_json()
    assert models["source"] == "fallback" and [m["id"] for m in models["data"]] == [f.id for f in CURRENT]


@pytest.mark.parametrize("fault", [{"body": "cut"}, {"body": "malformed"}, {"status": 500}, {"body": "stall"}])
def test_a_broken_model_list_means_the_fallback_and_not_ready(make_app, simulator, fault):
    client = make_app(READY_TIMEOUT_S="1").test_client()
    simulator.script_models([fault, fault])
    for path in ("/api/chat/models", "/api/info"):
        response = client.get(path)
        assert response.status_code == 200, response.get_data(as_text=True)
    assert client.get("/api/chat/models").get_json()["source"] == "fallback"
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.get_json()["code"] == "not_ready"
    assert ready.get_json()["checks"]["upstream"] in ("upstream_disconnected", "upstream_malformed", "upstream_error",
                                                      "upstream_timeout")
