"""The simulator's runners (kimi_backend/moonshot/simulator/servers.py): the gevent CLI server as
its own process, and the threaded server under gevent's monkey-patching."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from kimi_backend.moonshot.simulator import OFFLINE_NOTICE
from tests.helpers import ROOT, wait_until
from tests.simulator_support import MODEL, content_of, open_then_hang_up, parse, read_stream


def test_gevent_server_streams_and_holds_concurrency(simulator_process):
    gevent_sim = simulator_process()
    assert gevent_sim.log().splitlines()[0] == f"simulator listening on {gevent_sim.base_url}", gevent_sim.log()
    _, events, error = read_stream(gevent_sim.base_url, "hello sim:chunks=3")
    assert error is None and events[-1] == b"[DONE]"
    assert content_of(parse(events)) == f"{OFFLINE_NOTICE} You said: hello"

    gevent_sim.reset()

    def one(i):
        _, got, err = read_stream(gevent_sim.base_url, f"n{i} sim:chunks=4 sim:duration=1", timeout=(5, 10))
        return err is None and got[-1] == b"[DONE]"

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results)
    assert time.monotonic() - started < 8  # concurrent: 200 one-second streams, far from 200 s
    stats = wait_until(lambda: (s := gevent_sim.stats())["streams_completed"] == 200 and s, timeout=5,
                       message="200 completed streams")
    assert stats and stats["open_streams"] == 0


def test_gevent_break_after_and_abort(simulator_process):
    gevent_sim = simulator_process()
    _, events, error = read_stream(gevent_sim.base_url, "hi sim:chunks=5 sim:break_after=1")
    assert isinstance(error, requests.exceptions.ChunkedEncodingError)
    assert b"[DONE]" not in events and len(events) == 1 + 1

    gevent_sim.reset()
    open_then_hang_up(gevent_sim.port, "hi sim:chunks=50 sim:interval=0.05")
    assert wait_until(lambda: gevent_sim.stats()["streams_aborted"] == 1, timeout=5, message="the stream to be counted as aborted")


def test_start_in_thread_under_gevent_monkey_patching():
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import requests\n"
        "from kimi_backend.moonshot.simulator import start_in_thread\n"
        "server = start_in_thread()\n"
        f"body = {{'model': {MODEL!r}, 'stream': True, 'messages': [{{'role': 'user', 'content': 'hi'}}]}}\n"
        "r = requests.post(server.base_url + '/chat/completions', json=body,\n"
        "                  headers={'Authorization': 'Bearer sk-x'}, timeout=10)\n"
        "assert r.content.endswith(b'data: [DONE]\\n\\n'), r.content\n"
        "server.stop()\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
