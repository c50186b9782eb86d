"""Starting the processes a benchmark compares: the simulator (the upstream), our service
as `make run` starts it, and the reference minimal proxy, each on a free loopback port."""
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

from kimi_backend.config.settings import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
BENCH_KEY = "sk-bench"
# Not inherited from the caller's shell: every setting, and what gunicorn and prometheus-client read themselves.
NOT_INHERITED = frozenset(variable.name for variable in VARIABLES) | {"GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR"}
# What a benchmark run writes (each service's usage database, wrk's scripts, LiteLLM's config)
# goes in here, removed when the run ends: a run starts dozens of services, 2 MB of database each.
SCRATCH = tempfile.TemporaryDirectory(prefix="kimi-bench-")


def scratch_dir(prefix: str) -> str:
    """A new directory in SCRATCH."""
    return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH.name)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict:
    """The caller's environment less every setting of ours (and gunicorn's), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(DOTENV_PATH="", **extra)
    return env


class Proc:
    """A benchmark subprocess with a URL, its process tree's peak memory, and stop()."""

    def __init__(self, name: str, command: list[str], url: str, ready_path: str, cwd: Path = ROOT, *,
                 start_timeout_s: float = 90, stderr=subprocess.DEVNULL, **env: str):
        """Starts `command` and waits (up to `start_timeout_s`: LiteLLM's proxy takes tens of
        seconds to import, our service under valgrind minutes) until `url + ready_path` answers."""
        self.name = name
        self.url = url
        self.proc = subprocess.Popen(command, cwd=cwd, env=clean_env(**env),
                                     stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if requests.get(url + ready_path, timeout=1).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop(timeout_s=5)  # a slow start is not left running behind the error
                raise RuntimeError(f"{name} did not start: {' '.join(command)}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """This process and all its descendants, a generation at a time: gunicorn's workers
        first, then anything they started (a process a worker starts uses CPU and memory the
        service costs too)."""
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
        children: dict[int, list[int]] = {}
        for pid, parent in (map(int, line.split()) for line in out.splitlines() if line.strip()):
            children.setdefault(parent, []).append(pid)
        tree = [self.proc.pid]
        for pid in tree:  # grows as it goes: breadth first
            tree.extend(sorted(children.get(pid, ())))
        return tree

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) summed over the process tree, in MiB."""
        total_kb = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
            except OSError:
                pass
        return total_kb / 1024

    def rss_mb(self) -> float:
        """Resident memory now (VmRSS) summed over the process tree, in MiB."""
        total_kb = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
            except OSError:
                pass
        return total_kb / 1024

    def cpu_seconds(self) -> float:
        """User+system CPU time used so far by the process tree."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / ticks

    def stop(self, timeout_s: float = 20) -> None:
        """Stops the whole process group: SIGTERM, then SIGKILL after `timeout_s`."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            pass  # the group is gone already
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start_simulator() -> Proc:
    """The simulator on its gevent server: the upstream for everything else."""
    port = free_port()
    return Proc("simulator", [sys.executable, "-m", "kimi_backend.moonshot.simulator", "--host", "127.0.0.1",
                              "--port", str(port)], f"http://127.0.0.1:{port}/v1", "/models")


def start_service(upstream: str, **env: str) -> Proc:
    """Our service, as `make run` starts it (gunicorn with gunicorn.conf.py), live against `upstream`.
    The rate limit is raised out of the way but stays active, so its cost is measured; the
    per-address connection cap is off, since one load generator plays every client. It logs
    at the default level, so each request's JSON line is written (to /dev/null) and counted."""
    port = free_port()
    return Proc("service", SERVICE_COMMAND, f"http://127.0.0.1:{port}", "/health", **service_settings(upstream, port, **env))


# Our service as `make run` starts it.
SERVICE_COMMAND = [sys.executable, "serve.py"]  # gunicorn with gunicorn.conf.py, once serve.py has checked the settings


def service_settings(upstream: str, port: int, **env: str) -> dict:
    """The benchmark's settings for our service on `port` (see `start_service`), then `env`."""
    settings = dict(KIMI_API_KEY=BENCH_KEY, KIMI_BASE_URL=upstream, PORT=str(port), HOST="127.0.0.1",
                    RATE_LIMIT_MAX_REQUESTS="100000000",
                    USAGE_DATABASE_URL=f"sqlite:///{scratch_dir('usage-')}/usage.sqlite3",
                    # One load generator plays every client from one address.
                    MAX_CONNECTIONS_PER_IP="0")
    settings.update(env)
    return settings


def start_min_proxy(upstream: str, worker_args: list[str]) -> Proc:
    """The reference minimal proxy (../shared/reference/min_proxy.py) with the given gunicorn worker flags."""
    port = free_port()
    return Proc("min_proxy", [sys.executable, "-m", "gunicorn", *worker_args, "-b", f"127.0.0.1:{port}",
                              "--no-control-socket", "min_proxy:app"],
                f"http://127.0.0.1:{port}", "/api/chat/completion", cwd=REFERENCE, UPSTREAM=upstream)
