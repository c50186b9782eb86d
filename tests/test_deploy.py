"""Deployment files: the Docker image's command and health check, the systemd unit (checked
by systemd-analyze where it exists), and deploy/nginx.conf run for real in front of gunicorn."""
from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from kimi_backend.config import load_settings
from tests.conftest import UPSTREAM_KEY
from tests.helpers import ROOT, free_port, json_lines, require_binary, wait_until
from tests.servers import Process, Service, clean_env

# serve.py checks the settings, then becomes `gunicorn -c gunicorn.conf.py wsgi:app`.
SERVE_COMMAND = "python serve.py"


def dockerfile_instruction(name: str) -> str:
    """The (last) value of a Dockerfile instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    values = re.findall(rf"^{name}\s+(.+)$", text, flags=re.M)
    assert values, f"Dockerfile has no {name}"
    return values[-1].strip()


def test_image_runs_the_readme_and_make_run_command():
    assert " ".join(json.loads(dockerfile_instruction("CMD"))) == SERVE_COMMAND
    assert re.search(r"^\t\$\(BIN\)/" + re.escape(SERVE_COMMAND) + "$", (ROOT / "Makefile").read_text(), flags=re.M)
    readme = (ROOT / "README.md").read_text()
    assert SERVE_COMMAND in readme
    assert re.search(r"^docker run .*--env-file \.env .*kimi-backend$", readme, flags=re.M)


def test_image_health_check_calls_a_route_that_answers(client):
    check = dockerfile_instruction("HEALTHCHECK")
    path = re.search(r"127\.0\.0\.1:%s(/[\w/]*)", check).group(1)
    assert client.get(path).status_code == 200
    assert dockerfile_instruction("EXPOSE") == "3000"


def test_image_runs_as_a_non_root_user_and_leaves_secrets_out():
    user = dockerfile_instruction("USER").split(":")[0]
    assert user not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv"} <= set(ignored)


def test_systemd_unit_has_credentials_restart_and_hardening():
    unit = (ROOT / "deploy" / "kimi-backend.service").read_text()
    for line in ("EnvironmentFile=", "LoadCredential=kimi_api_key:", "KIMI_API_KEY_FILE=%d/kimi_api_key",
                 "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "KillSignal=SIGTERM"):
        assert line in unit
    exec_start = re.search(r"^ExecStart=(\S+) (.+)$", unit, flags=re.M)
    assert exec_start.group(1) == "/opt/kimi-backend/.venv/bin/python" and exec_start.group(2) == SERVE_COMMAND.removeprefix("python ")


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed (this check may skip even in CI)")
    unit = (ROOT / "deploy" / "kimi-backend.service").read_text()
    # verify checks that ExecStart exists: point it at this machine's Python and tree.
    unit = unit.replace("/opt/kimi-backend/.venv/bin/python", __import__("sys").executable).replace("/opt/kimi-backend", str(ROOT))
    path = tmp_path / "kimi-backend.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_nginx_waits_longer_than_the_service_for_a_non_streamed_reply():
    """A non-streamed call on a thinking model is silent for minutes: nginx must not answer it
    with its own HTML 504 before the service has had UPSTREAM_COMPLETION_TIMEOUT_S."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    read_timeout = int(re.search(r"^\s*proxy_read_timeout (\d+)s;$", site, flags=re.M).group(1))
    assert read_timeout > load_settings({"KIMI_OFFLINE": "1"}).completion_timeout_s


# ---------------------------------------------------------------- nginx for real

def plain_http_nginx_config(listen_port: int, backend_port: int, prefix: Path) -> str:
    """deploy/nginx.conf with only its TLS parts swapped for plain HTTP on loopback, inside a
    minimal main configuration; every swap must match, so the test keeps up with the file."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    swaps = [
        (r"server \{\n    listen 80;.*?\n\}\n", ""),  # the port-80 redirect to https
        (r"    listen 443 ssl http2;\n    listen \[::\]:443 ssl http2;\n", f"    listen 127.0.0.1:{listen_port};\n"),
        (r"    ssl_[a-z_]+ [^\n]*;\n", ""),
        (r"server 127\.0\.0\.1:3000;", f"server 127.0.0.1:{backend_port};"),
    ]
    for pattern, replacement in swaps:
        site, count = re.subn(pattern, replacement, site, flags=re.S)
        assert count, f"deploy/nginx.conf no longer has {pattern!r}"
    # Port 443 as a word: the random ports put in above may contain the digits (44301).
    assert "ssl" not in site and not re.search(r"\b443\b", site)
    temp_paths = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"events {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n{temp_paths}\n{site}\n}}\n"


class Nginx(Process):
    """nginx in the foreground on a free loopback port, proxying to `backend_port`."""

    def __init__(self, backend_port: int):
        binary = require_binary("nginx")
        self.prefix = Path(tempfile.mkdtemp(prefix="kimi-nginx-"))
        self.prefix.chmod(0o755)  # nginx's workers run as an unprivileged user when started as root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = self.prefix / "nginx.conf"
        conf.write_text(plain_http_nginx_config(self.port, backend_port, self.prefix))
        command = [binary, "-p", str(self.prefix), "-c", str(conf), "-e", "stderr",
                   "-g", f"daemon off; pid {self.prefix}/nginx.pid; error_log stderr;"]
        super().__init__(command, clean_env())
        self.await_ready(lambda: self.serves_health(self.url, "nginx"), 20, "nginx")

    def stop(self, *args, **kwargs) -> int:
        code = super().stop(*args, **kwargs)
        shutil.rmtree(self.prefix, ignore_errors=True)
        return code


@pytest.fixture
def behind_nginx(simulator_server, simulator):
    """The service under gunicorn, trusting one proxy, with a real nginx in front."""
    service = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url,
                      TRUSTED_PROXY_COUNT="1", RATE_LIMIT_MAX_REQUESTS="3")
    try:
        nginx = Nginx(service.port)
    except BaseException:
        service.stop()
        raise
    yield service, nginx
    nginx.stop()
    service.stop()


def test_stream_events_arrive_one_by_one_through_nginx(behind_nginx):
    _, nginx = behind_nginx
    arrivals: list[tuple[float, bytes]] = []
    buffer = b""
    with requests.post(nginx.url + "/api/chat/stream", json={"messages": "hi sim:chunks=5 sim:interval=0.3", "thinking": False},
                       stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for block in response.iter_content(chunk_size=None):
            buffer += block
            *events, buffer = buffer.split(b"\n\n")
            arrivals += [(time.monotonic(), event) for event in events if event.startswith(b"data: ")]
    contents = [moment for moment, event in arrivals if event.startswith(b'data: {"content"')]
    assert len(contents) == 6 and arrivals[-1][1] == b"data: [DONE]"
    # Buffered, every event would arrive in one burst at the end; unbuffered, they keep the
    # upstream's 0.3 s rhythm.
    gaps = [later - earlier for earlier, later in zip(contents, contents[1:4])]
    assert all(gap > 0.15 for gap in gaps), gaps


def get_info_from(nginx: Nginx, source_ip: str, forged_for: str | None = None) -> int:
    """GET /api/info through nginx from a given loopback address; returns the status."""
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=(source_ip, 0))
    try:
        connection.request("GET", "/api/info", headers={"X-Forwarded-For": forged_for} if forged_for else {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_rate_limit_sees_the_real_client_ip_through_nginx(behind_nginx):
    service, nginx = behind_nginx
    # A forged X-Forwarded-For does not let a client pass for someone else: nginx appends
    # the address it saw, and TRUSTED_PROXY_COUNT=1 reads only that last hop.
    statuses = [get_info_from(nginx, "127.0.0.2", forged_for=f"203.0.113.{n}") for n in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert get_info_from(nginx, "127.0.0.3") == 200, "another client has its own budget"
    wait_until(lambda: [line.get("client") for line in json_lines(service.log())].count("ip:127.0.0.2") == 4,
               timeout=10, message="the access lines of 127.0.0.2")
    assert "203.0.113." not in service.log()


def test_the_package_carries_the_version_the_service_reports():
    """pyproject.toml takes its version from kimi_backend/version.py, the one place it is
    written (/health, /api/info and the OpenAPI document read it there)."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    from kimi_backend.version import __version__

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools calls its pyproject support beta
        package = apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    assert (package.get_name(), package.get_version()) == ("kimi-backend", __version__)
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.dynamic]")[0]
