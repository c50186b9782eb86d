"""Runs every benchmark and prints their tables (`make bench`)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import latency, relay, soak, streams  # noqa: E402

if __name__ == "__main__":
    sys.exit(latency.main([]) or relay.main([]) or streams.main([]) or soak.main([]))
