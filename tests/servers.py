"""Real servers for end-to-end tests: the service under gunicorn (as `make run` starts it)
and the simulator as its own process, each on a free loopback port."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
# A rate-limit window of an hour: no limit test can straddle a fixed-window boundary.
LONG_WINDOW_MS = "3600000"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02, message: str = "condition"):
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def fetch_all(urls: list[str], headers: dict | None = None) -> list[requests.Response]:
    """GETs every URL, six at a time, each on its own connection; responses in URL order."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda url: requests.get(url, headers=headers or {}, timeout=10), urls))


class Process:
    """A subprocess whose combined output goes to a log file, stopped on `stop()`."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.log_file = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self) -> str:
        """Everything the process printed so far."""
        return Path(self.log_file.name).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signals the process and waits for it to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without project variables, plus `overrides`."""
    prefixes = ("KIMI_", "RATE_LIMIT_", "UPSTREAM_", "REQUIRE_API_KEY", "VALID_API_KEYS", "ALLOWED_",
                "LOG_BODIES", "METRICS_TOKEN", "READY_", "PROMETHEUS_MULTIPROC_DIR", "TOKEN_", "ANON_", "ANONYMOUS_",
                "ADMIN_API_KEY")
    unset = ("NODE_ENV", "APP_ENV", "PORT", "TRUSTED_PROXY_COUNT", "FORCE_HTTPS", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in unset}
    env.update(DOTENV_PATH="", HOST="127.0.0.1")
    env.update(overrides)
    return env


class Service(Process):
    """The service under gunicorn with the project's gunicorn.conf.py."""

    def __init__(self, *, port: int | None = None, extra_args: tuple[str, ...] = (), **env: str):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *extra_args, "wsgi:app"]
        super().__init__(command, clean_env(PORT=str(self.port), **env))
        wait_until(self._ready, timeout=30, message=f"the service on {self.url}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited early:\n{self.log()}")
        try:
            return requests.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False


class SimulatorProcess(Process):
    """The simulator as its own process (gevent server), as the benchmarks run it."""

    def __init__(self, api_key: str | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "kimi_backend.moonshot.simulator", "--host", "127.0.0.1", "--port", str(self.port)]
        if api_key:
            command += ["--api-key", api_key]
        super().__init__(command, clean_env())
        wait_until(lambda: "listening" in self.log(), timeout=20, message="the simulator to listen")

    def stats(self) -> dict:
        """The simulator's counters."""
        return requests.get(self.base_url.removesuffix("/v1") + "/_sim/stats", timeout=5).json()


def require_binary(name: str) -> str:
    """The path of a system binary a test drives for real. Missing: the test is skipped on a
    developer's machine, but fails under CI (`CI` set), so CI never silently skips it."""
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)), None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; .ci/run installs it with apt-get")
    pytest.skip(f"{name} is not installed (apt-get install {name})")


class RedisServer(Process):
    """A throwaway redis-server on a loopback port, with no persistence. `stop()` and
    `start()` again (same port) simulate an outage and its end."""

    def __init__(self):
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        """Starts the server and waits until it answers PING."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(command, clean_env())
        wait_until(self._answers, timeout=20, message=f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited early:\n{self.log()}")
        try:
            with redis.Redis(port=self.port, socket_timeout=1) as client:
                return client.ping()
        except redis.RedisError:
            return False
