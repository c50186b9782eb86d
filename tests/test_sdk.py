"""The JavaScript SDK (`static/kimi-sdk.js`) under Node's built-in test runner, against the
real service (gunicorn, offline simulator) with client keys required."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from tests.conftest import CLIENT_KEY
from tests.helpers import ROOT, require_binary

SDK_TESTS = sorted((ROOT / "tests" / "sdk").glob("*.test.mjs"))


def test_sdk_under_node_test_runner(keyed_service):
    node = require_binary("node")
    assert SDK_TESTS, "no tests/sdk/*.test.mjs found"
    result = subprocess.run([node, "--test", *map(str, SDK_TESTS)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "KIMI_URL": keyed_service.url, "KIMI_KEY": CLIENT_KEY})
    assert result.returncode == 0, f"node --test failed:\n{result.stdout}\n{result.stderr}\n--- service log ---\n{keyed_service.log()}"
    assert "# fail 0" in result.stdout


def declared_fields(interface: str) -> set[str]:
    """The field names an interface of kimi-sdk.d.ts declares (nested objects' included)."""
    body = re.search(rf"^export interface {interface} \{{\n(.*?)^\}}", (ROOT / "static" / "kimi-sdk.d.ts").read_text(),
                     flags=re.M | re.S).group(1)
    return set(re.findall(r"(\w+)\??:", body))


def test_the_types_declare_what_info_and_the_model_list_send(client):
    """The SDK's types follow the model table and /api/info (what issue 9 added included)."""
    info = client.get("/api/info").get_json()["data"]
    assert set(info) <= declared_fields("InfoResponse")
    for model in client.get("/api/chat/models").get_json()["data"]:
        assert set(model) - {"object", "created", "owned_by"} <= declared_fields("Model"), model


def test_readme_sdk_example_runs(keyed_service, tmp_path):
    """The README's first JavaScript example, pointed at the test service, runs as written."""
    node = require_binary("node")
    section = (ROOT / "README.md").read_text().split("## JavaScript SDK", 1)[1]
    example = re.search(r"```js\n(.*?)```", section, re.S).group(1)
    assert "import KimiClient from './kimi-sdk.js';" in example
    example = example.replace("http://localhost:3000", keyed_service.url).replace("your-client-key", CLIENT_KEY)
    shutil.copy(ROOT / "static" / "kimi-sdk.js", tmp_path / "kimi-sdk.js")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "example.js").write_text(example)
    result = subprocess.run([node, "example.js"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[offline simulator] You said: 你好"
    assert lines[-1] == "完成"
    assert "".join(lines[2:-1]) == "[offline simulator] You said: 写一个故事"
