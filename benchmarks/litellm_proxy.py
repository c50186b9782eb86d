"""LiteLLM's proxy, the best-known gateway, as a row in the same benchmark run: installed only
into its own virtualenv (`benchmarks/.litellm-venv`, or `LITELLM_VENV`), never as a dependency
of ours, and pointed at the same simulator with one model."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.procs import BENCH_KEY, ROOT, SCRATCH, Proc, free_port

VERSION = os.environ.get("LITELLM_VERSION", "1.106.2")
VENV = Path(os.environ.get("LITELLM_VENV", ROOT / "benchmarks" / ".litellm-venv"))


def ensure_installed() -> Path | None:
    """The `litellm` command of the benchmark's own virtualenv, installing it on first use;
    None (with the reason printed) when it cannot be installed here."""
    command = VENV / "bin" / "litellm"
    if command.exists():
        return command
    print(f"installing litellm[proxy]=={VERSION} into {VENV} (first run only) ...", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={VERSION}"], check=True,
                       timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"LiteLLM could not be installed ({exc}); its row is skipped.", file=sys.stderr)
        return None
    return command


def start_litellm(upstream: str, model: str) -> Proc | None:
    """LiteLLM's proxy (one worker, no database, no master key) serving `model` from `upstream`."""
    command = ensure_installed()
    if command is None:
        return None
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=SCRATCH.name, delete=False)
    config.write(f"model_list:\n  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n"
                 f"      api_base: {upstream}\n      api_key: {BENCH_KEY}\n"
                 "litellm_settings:\n  telemetry: false\n  drop_params: true\n")
    config.close()
    port = free_port()
    return Proc("litellm", [str(command), "--config", config.name, "--host", "127.0.0.1", "--port", str(port),
                            "--num_workers", "1"],
                f"http://127.0.0.1:{port}", "/health/liveliness", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False",
                # No key on either side of the comparison: ours runs with REQUIRE_API_KEY=false too.
                LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true")
