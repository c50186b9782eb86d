"""Real servers for end-to-end tests: the service under gunicorn (as `make run` starts it)
and the simulator as its own process, each on a free loopback port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


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
                "LOG_BODIES", "METRICS_TOKEN", "READY_", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in ("NODE_ENV", "APP_ENV", "PORT")}
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
    """The path of a system binary a test drives; skips without it, except under CI (the
    `CI` variable set), where a missing binary is a failure: .ci/run installs it."""
    import shutil

    import pytest

    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed, and CI must run this test (.ci/run installs it)")
    pytest.skip(f"{name} is not installed")


class RedisServer(Process):
    """A throwaway redis-server on a free loopback port, without persistence."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [require_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port),
                   "--save", "", "--appendonly", "no"]
        super().__init__(command, clean_env())
        wait_until(lambda: "Ready to accept connections" in self.log(), timeout=20, message="redis-server")
