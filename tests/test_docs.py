"""The docs keep up with the code: every setting documented, the Chinese README parallel to
the English one, the READMEs' model tables and .env.example's default model those of the one
model table."""
from __future__ import annotations

import fnmatch
import re

import pytest

from kimi_backend.config.settings import VARIABLES
from kimi_backend.moonshot.models import CURRENT, DEFAULT, DEFAULT_MODEL, MODELS, THINKING_REPLACEMENT
from tests.helpers import ROOT

READMES = ("README.md", "README.zh-CN.md")
# How each README words a model's thinking and whether its sampling is fixed.
THINKING_WORDS = {"optional": ("on by default", "默认开启"), "always": ("always", "始终开启"), "none": ("none", "无")}


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


def model_tables(readme: str) -> list[list[list[str]]]:
    """The rows (cells without their backticks) of the tables in a README's models section."""
    section = re.search(r"^## (?:Models|模型).*?(?=^## )", (ROOT / readme).read_text(), flags=re.M | re.S).group(0)
    tables = re.findall(r"(?:^\|.*\|$\n?)+", section, flags=re.M)
    return [[[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
            for table in tables]


@pytest.mark.parametrize("readme", READMES)
def test_the_readme_model_table_is_the_model_table(readme):
    current, retired = model_tables(readme)
    assert [row[0].split("`")[1] for row in current] == [facts.id for facts in CURRENT]
    for row, facts in zip(current, CURRENT):
        assert (DEFAULT_MODEL == facts.id) == ("default" in row[0] or "默认" in row[0]), row
        assert int(row[1].replace(",", "")) == facts.context_length, row
        assert row[2].startswith(THINKING_WORDS[facts.thinking]), row
        assert row[3].startswith(("yes", "是") if facts.fixed_sampling else ("no", "否")), row
    # Every retired id, once, in the row naming where its requests go.
    answered_by = {"`DEFAULT_MODEL`": DEFAULT, f"`{THINKING_REPLACEMENT}`": THINKING_REPLACEMENT}
    rows = [(re.findall(r"`([^`]+)`", row[0]), answered_by[re.match(r"`[^`]+`", row[1]).group(0)]) for row in retired]
    for facts in (facts for facts in MODELS if facts.retired):
        matches = [target for patterns, target in rows
                   if any(fnmatch.fnmatchcase(facts.id, pattern) for pattern in patterns)]
        assert matches == [facts.replaced_by], (readme, facts.id, matches)


def test_env_example_and_the_settings_tables_name_the_default_model():
    env_example = (ROOT / ".env.example").read_text()
    assert re.search(r"^# DEFAULT_MODEL=(\S+)$", env_example, flags=re.M).group(1) == DEFAULT_MODEL
    assert f"unset: {DEFAULT_MODEL}," in env_example
    for readme in READMES:
        assert f"| `DEFAULT_MODEL` | `{DEFAULT_MODEL}` |" in (ROOT / readme).read_text()
