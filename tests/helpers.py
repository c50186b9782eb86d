"""Helpers every kind of test shares: the repository root, free ports, the one wait helper, a
request sent by hand (to hang up mid-reply), skipping (or, under CI, failing) without a system
program, and the check of our JSON error."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A rate-limit window of an hour: no limit test can straddle a fixed-window boundary.
LONG_WINDOW_MS = "3600000"

# Every chat route with a minimal valid body, as (method, path, JSON body).
CHAT_CALLS = [
    ("post", "/api/chat/completion", {"message": "hi"}),
    ("post", "/api/chat/history", {"messages": [{"role": "user", "content": "hi"}]}),
    ("post", "/api/chat/stream", {"messages": "hi"}),
    ("get", "/api/chat/models", None),
]


def call(client, method, path, body, headers=None):
    """One CHAT_CALLS item through a Flask test client."""
    return getattr(client, method)(path, json=body, headers=headers or {})


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02, message: str = "condition"):
    """Polls `predicate` until it returns a truthy value, and returns that value; fails the
    test when the deadline passes first. No test waits on a fixed sleep instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def json_lines(log: str) -> list[dict]:
    """The JSON objects among a service's log lines (the access lines and the service's own)."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def post_by_hand(port: int, path: str, payload: dict, headers: dict[str, str] | None = None) -> socket.socket:
    """Sends a JSON POST to 127.0.0.1:`port` on a raw connection, so that the test can hang
    up whenever it likes; returns the socket, which the caller closes."""
    body = json.dumps(payload).encode()
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
            *(f"{name}: {value}" for name, value in (headers or {}).items()), f"Content-Length: {len(body)}"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
    return sock


def receive_until(sock: socket.socket, done) -> bytes:
    """Reads from `sock` until `done(everything received)` holds; the server must not close first."""
    received = b""
    while not done(received):
        piece = sock.recv(65536)
        assert piece, f"the server closed the connection first, after {received[-300:]!r}"
        received += piece
    return received


def require(condition: bool, what: str) -> None:
    """Skips without `what` on a developer's machine, but fails under CI (`CI` set), where
    .ci/run installs everything the tests drive for real, so nothing is silently skipped."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required under CI")
        pytest.skip(f"{what} is not available")


def require_binary(name: str) -> str:
    """The path of a system program a test drives for real (see `require`)."""
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)), None)
    require(path is not None, f"{name} (apt-get install {name})")
    return path


def npm_installed(package: Path, module: str) -> Path:
    """`package` (a directory of the tests with a package-lock.json) with its locked modules
    installed by `npm ci`, once: when `node_modules/<module>` is missing. npm is required
    like node is (see `require`)."""
    if not (package / "node_modules" / module / "package.json").exists():
        npm = shutil.which("npm")
        require(npm is not None, "npm")
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=package, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
    return package


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The Flask test response is our JSON error shape with this status (and code); returns its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["code"], str) and body["code"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    if code:
        assert body["code"] == code
    assert "Traceback" not in body["error"] and "<html" not in response.get_data(as_text=True).lower()
    return body


class RawUpstream:
    """A raw socket server on loopback standing in for the upstream, where the simulator cannot
    say what a test needs on the wire: every connection it accepts is handed to `answer(conn)`
    in a thread of its own. `base_url` is its URL for KIMI_BASE_URL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted()
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def accepted(self) -> None:
        """Called for each connection accepted, before it is answered."""

    def close(self) -> None:
        self.listener.close()
