"""The process itself: its open-files limit, and whether it runs on gevent's greenlets. No
Flask here: gunicorn's master and the simulator's gevent server raise the limit before
serving, and neither may import the app to do so."""
from __future__ import annotations

import sys

try:
    import resource
except ImportError:  # Windows has no resource module and no such limit to raise
    resource = None

# Far above what one process serves (each open stream holds two sockets), yet a finite number
# when the hard limit is unlimited.
OPEN_FILES_WANTED = 65536


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey-patching (gunicorn's gevent worker), its
    threads then greenlets that switch only where they would block."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> None:
    """Raises the soft RLIMIT_NOFILE (often 1,024) to `wanted`, or to the hard limit when that
    is lower; never lowers it. A refusal leaves the limit as it was: serving on goes further
    with fewer descriptors than stopping would."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
