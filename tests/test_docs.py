"""The docs keep up with the code: every setting documented, the Chinese README parallel to
the English one."""
from __future__ import annotations

import re

import pytest

from kimi_backend.config.settings import VARIABLES
from tests.helpers import ROOT


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a Markdown text, in order."""
    return re.findall(r"^```.*?^```$", text, flags=re.M | re.S)


@pytest.mark.parametrize("name", [variable.name for variable in VARIABLES])
def test_every_setting_is_in_env_example_and_both_readmes(name):
    env_example = (ROOT / ".env.example").read_text()
    readmes = [(ROOT / name).read_text() for name in ("README.md", "README.zh-CN.md")]
    assert re.search(rf"^#? ?{name}=", env_example, flags=re.M), f"{name} missing from .env.example"
    for readme in readmes:
        assert f"`{name}`" in readme, f"{name} missing from a README"


def test_chinese_readme_is_parallel_to_the_english_one():
    english = (ROOT / "README.md").read_text()
    chinese = (ROOT / "README.zh-CN.md").read_text()
    assert code_blocks(chinese) == code_blocks(english)
    headings = [re.findall(r"^(#+) ", text, flags=re.M) for text in (english, chinese)]
    assert headings[0] == headings[1]
