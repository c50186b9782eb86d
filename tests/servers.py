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

from kimi_backend.config.settings import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
# Every variable the service reads: a developer's shell could set any of them.
SETTING_VARIABLES = frozenset(variable.name for variable in VARIABLES)
# Read by gunicorn and prometheus-client themselves, so a started service must not inherit them.
SERVER_VARIABLES = frozenset(("PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS"))
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
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARIABLES | SERVER_VARIABLES}
    env.update(DOTENV_PATH="", HOST="127.0.0.1")
    env.update(overrides)
    return env


class Service(Process):
    """The service under gunicorn with the project's gunicorn.conf.py; its usage ledger is a
    temporary SQLite file unless `USAGE_DATABASE_URL` is given."""

    def __init__(self, *, port: int | None = None, extra_args: tuple[str, ...] = (), **env: str):
        env.setdefault("USAGE_DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='kimi-usage-')}/usage.sqlite3")
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


def postgres_binaries() -> Path:
    """The directory of PostgreSQL's server programs (Debian keeps them out of PATH). Missing:
    skipped on a developer's machine, a failure under CI (.ci/run installs `postgresql`)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    if found:
        return found[-1].parent
    if os.environ.get("CI"):
        pytest.fail("PostgreSQL is not installed; .ci/run installs it with apt-get (postgresql)")
    pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")


class PostgresServer(Process):
    """A throwaway PostgreSQL cluster in a temporary directory, on a loopback port, trusting
    local connections. PostgreSQL refuses to run as root, so as root it runs as the
    `postgres` user (which the Debian package creates), or `nobody`."""

    def __init__(self):
        bin_dir = postgres_binaries()
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="kimi-test-pg-"))
        self.url = f"postgresql://kimi@127.0.0.1:{self.port}/postgres"
        prefix: list[str] = []
        if os.geteuid() == 0:
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.data_dir, user)
            prefix = ["runuser", "-u", user, "--"]
        init = subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(self.data_dir / "db"), "-U", "kimi",
                               "-A", "trust", "--no-sync"], capture_output=True, text=True)
        if init.returncode != 0:
            raise AssertionError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        self._command = [*prefix, str(bin_dir / "postgres"), "-D", str(self.data_dir / "db"), "-p", str(self.port),
                         "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data_dir}",
                         "-c", "fsync=off"]
        self.start()

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        super().__init__(self._command, clean_env())
        wait_until(self._answers, timeout=30, message=f"PostgreSQL on port {self.port}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"postgres exited early:\n{self.log()}")
        return "ready to accept connections" in self.log() and _port_open(self.port)

    def remove(self) -> None:
        """Stops the server and deletes its files."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
