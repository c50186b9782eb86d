"""The JavaScript SDK (`static/kimi-sdk.js`) under Node's built-in test runner, against the
real service (gunicorn, offline simulator) with client keys required."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.servers import ROOT, Service

SDK_TESTS = sorted((ROOT / "tests" / "sdk").glob("*.test.mjs"))
CLIENT_KEY = "sdk-test-client-key"


def node_binary() -> str:
    """Node, or a skip (a failure under CI, where a missing Node must not pass silently)."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is required under CI for the SDK tests")
        pytest.skip("node is not installed")
    return node


@pytest.fixture(scope="module")
def keyed_service():
    # No upstream retries: the 429 tests want the simulator's Retry-After passed straight through.
    service = Service(REQUIRE_API_KEY="true", VALID_API_KEYS=CLIENT_KEY, UPSTREAM_MAX_RETRIES="0",
                      RATE_LIMIT_MAX_REQUESTS="10000")
    yield service
    service.stop()


def test_sdk_under_node_test_runner(keyed_service):
    node = node_binary()
    assert SDK_TESTS, "no tests/sdk/*.test.mjs found"
    result = subprocess.run([node, "--test", *map(str, SDK_TESTS)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "KIMI_URL": keyed_service.url, "KIMI_KEY": CLIENT_KEY})
    assert result.returncode == 0, f"node --test failed:\n{result.stdout}\n{result.stderr}\n--- service log ---\n{keyed_service.log()}"
    assert "# fail 0" in result.stdout
