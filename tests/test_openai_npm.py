"""The official `openai` npm package (tests/openai-npm, installed with `npm ci`) against the
service's /v1 surface, under Node's built-in test runner."""
from __future__ import annotations

import os
import subprocess

from kimi_backend.moonshot.models import DEFAULT_MODEL
from tests.conftest import CLIENT_KEY, UPSTREAM_KEY
from tests.helpers import ROOT, npm_installed, require_binary
from tests.servers import Service

PACKAGE = ROOT / "tests" / "openai-npm"


def test_official_openai_npm_package(simulator_server, simulator):
    node = require_binary("node")
    npm_installed(PACKAGE, "openai")
    service = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url, REQUIRE_API_KEY="true",
                      VALID_API_KEYS=CLIENT_KEY, RATE_LIMIT_MAX_REQUESTS="10000", UPSTREAM_MAX_RETRIES="0")
    try:
        result = subprocess.run([node, "--test", "openai.test.mjs"], cwd=PACKAGE, capture_output=True, text=True,
                                timeout=120, env={**os.environ, "KIMI_URL": service.url, "KIMI_KEY": CLIENT_KEY,
                                                  "KIMI_MODEL": DEFAULT_MODEL})
    finally:
        service.stop()
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n--- service log ---\n{service.log()}"
    assert "# fail 0" in result.stdout and "# pass 7" in result.stdout
    assert UPSTREAM_KEY not in service.log() + result.stdout
