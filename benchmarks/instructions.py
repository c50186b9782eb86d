"""CPU instructions per request of our service, counted by valgrind's callgrind: a measure of
CPU work that, unlike time on a shared VM, does not move from one minute to the next, so two
setups (or two commits) can be told apart by a few per cent.

For each setup, our service (one gevent worker, started as `make run` starts it, under
`valgrind --tool=callgrind`) is sent `--base` requests, or `--base` + `--requests` requests,
one at a time, and stopped; the worker's instructions in the second run less the first's,
divided by `--requests`, are what a request costs, startup and shutdown cancelled out. The
ledger's writer and its SQLite inserts are counted too (one worker's process, every thread).
Requests go one at a time at valgrind's pace (about 10 a second, slower on a busy machine): at
its 1-second flush the ledger would write batches whose size, and so its per-row share of each
batch's work, followed that pace. Here it flushes only when 500 rows wait (and at shutdown),
so the count does not depend on the pace: the 600-request run writes one batch of 500 more.

    python benchmarks/instructions.py [--setups off,on] [--requests 500] [--base 100] [--route /v1/chat/completions]
                                      [--checkout DIR]

`--route` is `/api/chat/completion` (the default) or `/v1/chat/completions`; or
`/api/chat/stream` or `/v1/chat/completions/stream` for a stream of one content chunk: what
opening a stream costs, with relaying that chunk and ending the stream.

`--checkout` runs the service from another checkout's files (say `git worktree add /tmp/old
<commit>`), with this checkout's virtualenv, to compare two commits.

The count still moves with the machine's load a little: some of the worker's work is per
second, not per request (gunicorn's heartbeat, gevent's timers), and under valgrind a busier
machine means more seconds per request. Two runs at a time, side by side, agreed with runs
alone in one session; in another (2026-12-05) each counted 1.6-2.9 % fewer instructions than
alone, every setup alike; five at a time raised one setup's count by 1.5 %. Compare commits or
setups measured under the same load: run them together (`--checkout` in two shells) or one
after the other, never a count from a run alone against one from a run beside another.

Needs valgrind (`apt-get install valgrind`); a run of the default two setups takes 8-10 minutes.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.latency import MESSAGE, USAGE_SETUPS  # noqa: E402
from benchmarks.procs import ROOT, SERVICE_COMMAND, Proc, free_port, service_settings, start_simulator  # noqa: E402
from kimi_backend.moonshot.models import DEFAULT_MODEL  # noqa: E402

BUDGETS = {"TOKEN_BUDGET_PER_DAY": "1000000000000", "TOKEN_BUDGET_TOTAL_PER_DAY": "1000000000000"}
SETUPS = {
    "off": dict(USAGE_SETUPS)["ledger + budgets off"],
    "on": dict(USAGE_SETUPS)["ledger + budgets on"],
    "ledger": {"WEB_CONCURRENCY": "1"},  # the default: the ledger on, no budget
    "budgets": {"WEB_CONCURRENCY": "1", "USAGE_LEDGER": "false", **BUDGETS},
}
# Batches by count, not by the clock (see above).
FLUSH_BY_COUNT = {"USAGE_FLUSH_INTERVAL_S": "3600"}
STARTUP_S = 600  # the app's imports take a minute or two under valgrind


# A stream of one content chunk: what opening a stream costs (issue 15 wants about 1 ms of CPU),
# plus relaying that chunk and ending the stream.
ONE_CHUNK = " sim:chunks=1"


def body_for(route: str) -> dict:
    if route == "/v1/chat/completions/stream":
        return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": MESSAGE + ONE_CHUNK}], "stream": True}
    if route.startswith("/v1/"):
        return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": MESSAGE}]}
    if route == "/api/chat/stream":
        return {"messages": MESSAGE + ONE_CHUNK}
    return {"message": MESSAGE}


def path_of(route: str) -> str:
    """The URL path of a `--route` (`/v1/chat/completions/stream` is /v1's completion, streamed)."""
    return route.removesuffix("/stream") if route.startswith("/v1/") else route


def worker_instructions(upstream: str, env: dict, route: str, count: int, checkout: Path = ROOT) -> int:
    """The instructions of the service's worker process over its whole life, serving `count` requests."""
    out = Path(tempfile.mkdtemp(prefix="kimi-callgrind-"))
    port = free_port()
    command = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/cg.%p",
               *SERVICE_COMMAND]
    with open(out / "valgrind.log", "w") as log:
        service = Proc(f"the service under valgrind (see {out}/valgrind.log)", command, f"http://127.0.0.1:{port}",
                       "/health", checkout, start_timeout_s=STARTUP_S, stderr=log,
                       **service_settings(upstream, port, **env, **FLUSH_BY_COUNT))
    try:
        worker = service.pids()[1]  # one worker: the master's only child
        with requests.Session() as session:
            for _ in range(count):
                answer = session.post(service.url + path_of(route), json=body_for(route), timeout=60)
                if answer.status_code != 200 or (route.endswith("/stream") and "[DONE]" not in answer.text):
                    raise RuntimeError(f"{route} answered {answer.status_code}: {answer.text[:200]}")
    finally:
        service.stop(timeout_s=300)  # the ledger writes what it holds, then callgrind writes its counts
    text = (out / f"cg.{worker}").read_text()
    totals = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    shutil.rmtree(out, ignore_errors=True)
    return int(totals.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="off,on", help=f"comma-separated, of: {', '.join(SETUPS)}")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--base", type=int, default=100)
    parser.add_argument("--route", default="/api/chat/completion")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose service is measured")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    setups = args.setups.split(",")
    unknown = [name for name in setups if name not in SETUPS]
    if unknown:
        sys.exit(f"unknown setup(s): {', '.join(unknown)}")
    simulator = start_simulator()
    try:
        per_request = {}
        for name in setups:
            low = worker_instructions(simulator.url, SETUPS[name], args.route, args.base, args.checkout)
            high = worker_instructions(simulator.url, SETUPS[name], args.route, args.base + args.requests, args.checkout)
            per_request[name] = (high - low) / args.requests
    finally:
        simulator.stop()
    print(f"\n## Instructions per {args.route} request (callgrind, one gevent worker, "
          f"{args.base + args.requests} less {args.base} requests, {args.checkout})\n")
    print(f"| setup | instructions per request | against {setups[0]} |")
    print("|---|---|---|")
    for name in setups:
        print(f"| {name} | {per_request[name] / 1e6:.3f} M | {per_request[name] / per_request[setups[0]]:.3f}x |")


if __name__ == "__main__":
    main()
