"""Real servers for end-to-end tests: the service under gunicorn (as `make run` starts it),
the simulator as its own process, redis and PostgreSQL, each on a free loopback port."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

from kimi_backend.config.settings import VARIABLES
from tests.helpers import ROOT, free_port, require, require_binary, wait_until

# Every variable the service reads: a developer's shell could set any of them.
SETTING_VARIABLES = frozenset(variable.name for variable in VARIABLES)
# Read by gunicorn and prometheus-client themselves, so a started service must not inherit them.
SERVER_VARIABLES = frozenset(("PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS"))


def fetch_all(urls: list[str], headers: dict | None = None) -> list[requests.Response]:
    """GETs every URL, six at a time, each on its own connection; responses in URL order."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda url: requests.get(url, headers=headers or {}, timeout=10), urls))


class Process:
    """A subprocess whose combined output goes to a log, stopped on `stop()`.

    The log is an unnamed temporary file (nothing is left in /tmp, even when a run is
    killed); `log()` reads it without moving the offset the process writes at, and after
    `stop()` returns what it held, so a failing test can still show it."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self._log_file = tempfile.TemporaryFile()
        self._final_log: str | None = None
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def log(self) -> str:
        """Everything the process printed so far."""
        if self._final_log is not None:
            return self._final_log
        fd = self._log_file.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signals the process and waits for it to exit; keeps its log and closes the file.
        Returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._final_log is None:
            self._final_log = self.log()
            self._log_file.close()
        return self.proc.returncode

    def await_ready(self, ready, timeout: float, message: str) -> None:
        """Waits until `ready()` holds (see wait_until); a process that never gets ready is
        stopped before the failure is raised, so it does not outlive the run."""
        try:
            wait_until(ready, timeout=timeout, message=message)
        except BaseException:
            self.stop()
            raise

    def serves_health(self, url: str, name: str) -> bool:
        """Whether `url`/health answers 200; fails at once, with the log, if the process has exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{name} exited early:\n{self.log()}")
        try:
            return requests.get(url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without project variables, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARIABLES | SERVER_VARIABLES}
    env.update(DOTENV_PATH="", HOST="127.0.0.1")
    env.update(overrides)
    return env


class Service(Process):
    """The service as `make run` starts it (serve.py: gunicorn with the project's gunicorn.conf.py); its usage ledger is a
    temporary SQLite file, removed on `stop()`, unless `USAGE_DATABASE_URL` is given."""

    def __init__(self, *, port: int | None = None, extra_args: tuple[str, ...] = (), **env: str):
        self._usage_dir = None
        if "USAGE_DATABASE_URL" not in env:
            self._usage_dir = tempfile.mkdtemp(prefix="kimi-usage-")
            env["USAGE_DATABASE_URL"] = f"sqlite:///{self._usage_dir}/usage.sqlite3"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "serve.py", *extra_args]  # as `make run` starts it
        super().__init__(command, clean_env(PORT=str(self.port), **env))
        self.await_ready(lambda: self.serves_health(self.url, "service"), 30, f"the service on {self.url}")

    def stop(self, *args, **kwargs) -> int:
        """Stops the service (see Process.stop) and removes its temporary usage ledger."""
        code = super().stop(*args, **kwargs)
        if self._usage_dir:
            shutil.rmtree(self._usage_dir, ignore_errors=True)
        return code


class SimulatorProcess(Process):
    """The simulator as its own process (gevent server), as the benchmarks run it."""

    def __init__(self, api_key: str | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "kimi_backend.moonshot.simulator", "--host", "127.0.0.1", "--port", str(self.port)]
        if api_key:
            command += ["--api-key", api_key]
        super().__init__(command, clean_env())
        self.await_ready(lambda: "listening" in self.log(), 20, "the simulator to listen")

    def stats(self) -> dict:
        """The simulator's counters (GET /_sim/stats)."""
        return requests.get(self.base_url.removesuffix("/v1") + "/_sim/stats", timeout=5).json()

    def reset(self) -> None:
        """Zeroes its counters and clears its script queue (POST /_sim/reset)."""
        requests.post(self.base_url.removesuffix("/v1") + "/_sim/reset", timeout=5).raise_for_status()


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
        self.await_ready(self._answers, 20, f"redis-server on port {self.port}")

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
    require(bool(found), "PostgreSQL (apt-get install postgresql)")
    return found[-1].parent


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
        self.await_ready(self._answers, 30, f"PostgreSQL on port {self.port}")

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
