"""kimi_backend/system.py: the open-files limit, raised in a child process so this one keeps its own."""
from __future__ import annotations

import resource
import subprocess
import sys

from tests.helpers import ROOT

PROBE = """
import resource
from kimi_backend.system import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({start}, hard))
raise_open_files_limit({wanted})
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def soft_limit_after(start: int, wanted: int) -> tuple[int, int]:
    """The soft limit a fresh process has after raising it from `start` toward `wanted`, and its hard limit."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(start=start, wanted=wanted)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30, check=True)
    soft, hard = result.stdout.split()
    return int(soft), int(hard)


def test_the_soft_limit_rises_to_the_wanted_number_or_the_hard_limit():
    soft, hard = soft_limit_after(start=256, wanted=65536)
    assert soft == (65536 if hard == resource.RLIM_INFINITY else min(hard, 65536))


def test_the_soft_limit_is_never_lowered():
    soft, _ = soft_limit_after(start=512, wanted=300)
    assert soft == 512
