"""Issue 2's benchmark: `/api/chat/completion` latency at 1 connection and throughput at 16,
straight to the simulator, through the reference minimal proxy, and through our service,
at the same number of processes. Uses wrk (Debian package `wrk`) as the load generator.

    python benchmarks/latency.py [--seconds 10] [--usage-rounds 3] [--pair-rounds 16] [--pair-seconds 4]
                                 [--usage-only | --store-only | --litellm-only | --floor-only]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.litellm_proxy import start_litellm  # noqa: E402
from benchmarks.procs import BENCH_KEY, SCRATCH, start_min_proxy, start_service, start_simulator  # noqa: E402
from kimi_backend.config import usable_cpus  # noqa: E402
from kimi_backend.moonshot.models import DEFAULT_MODEL  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
# Every target asks the same of the upstream: the default model, no reasoning to relay.
MESSAGE = "hello sim:reasoning=0"

# Each comparison: a label, our service's gunicorn environment, the same worker model for min_proxy.
# The first is the one the /v1 route and LiteLLM are measured on too.
SETUPS = [
    ("gevent, 1 process", {"WEB_CONCURRENCY": "1"}, ["-k", "gevent", "-w", "1", "--worker-connections", "2000"]),
    ("gthread, 1 process x 16 threads", {"WEB_CONCURRENCY": "1", "WORKER_CLASS": "gthread", "GUNICORN_THREADS": "16"},
     ["-k", "gthread", "-w", "1", "--threads", "16"]),
    (f"gevent, {usable_cpus()} processes (our default: every core)", {},
     ["-k", "gevent", "-w", str(usable_cpus()), "--worker-connections", "2000"]),
]


def wrk(url: str, body: dict, connections: int, seconds: int, headers: dict | None = None) -> dict:
    """Runs wrk and returns p50/p99 latency (ms), requests/s and error counts."""
    script = "wrk.method = 'POST'\nwrk.body = [[" + json.dumps(body, ensure_ascii=False) + "]]\n"
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        script += f"wrk.headers['{name}'] = '{value}'\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", dir=SCRATCH.name, delete=False) as handle:
        handle.write(script)
    threads = 1 if connections == 1 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", handle.name, url],
                         capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))

    def ms(text: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", text).groups()
        return float(number) * UNITS[unit]

    requests_total = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"p50": ms(latency["50"]), "p99": ms(latency["99"]), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": requests_total, "errors": (int(non_2xx.group(1)) if non_2xx else 0) + (1 if socket_errors else 0)}


def measure(target, url: str, body: dict, seconds: int, headers: dict | None = None) -> dict:
    """Latency at 1 connection, then throughput (and CPU per request) at 16."""
    wrk(url, body, 16, 2, headers)  # warm up pools and caches
    single = wrk(url, body, 1, seconds, headers)
    cpu_before = target.cpu_seconds() if target else 0.0
    loaded = wrk(url, body, 16, seconds, headers)
    cpu_ms = (target.cpu_seconds() - cpu_before) * 1000 / max(1, loaded["requests"]) if target else float("nan")
    return {"p50": single["p50"], "p99": single["p99"], "rps": loaded["rps"], "p99_16": loaded["p99"],
            "cpu_ms": cpu_ms, "errors": single["errors"] + loaded["errors"]}


# Issue 13: the usage ledger (SQLite, the default) and token budgets (per client and for the
# service, set far out of reach so every request is reserved and settled but none refused).
USAGE_SETUPS = [
    ("ledger + budgets off", {"WEB_CONCURRENCY": "1", "USAGE_LEDGER": "false"}),
    ("ledger + budgets on", {"WEB_CONCURRENCY": "1", "TOKEN_BUDGET_PER_DAY": "1000000000000",
                             "TOKEN_BUDGET_TOTAL_PER_DAY": "1000000000000"}),
]


# Issue 13's comparison is many short rounds, each starting both services afresh: two copies of
# one service, started once and measured in turn, stayed 12 % apart over a whole run (a process
# keeps its placement, hash seed and memory layout), and on this kind of shared VM a single
# round's ratio moves by 15 % either way. The median of the rounds' ratios, with a bootstrap
# interval, says how far apart the two are and how sure that is.
PAIR_ROUNDS = 16
PAIR_SECONDS = 4


# Issue 15: the store the workers of one host share their counts in (kimi_backend/shared_counts.py),
# against in-process memory, at one worker (the store's cost alone) and at every core.
STORE_SETUPS = [
    ("1 worker, memory://", {"WEB_CONCURRENCY": "1"}),
    ("1 worker, shared store", {"WEB_CONCURRENCY": "1", "RATE_LIMIT_STORAGE_URI": "sqlite://{counts}/counts.sqlite3"}),
    (f"{usable_cpus()} workers, shared store (default)", {}),
]


def rotated(items: list, round_: int) -> list:
    """`items` starting `round_` places along (wrapping round), so that over the rounds no
    item always follows the same one."""
    shift = round_ % len(items)
    return items[shift:] + items[:shift]


def medians(runs: list[dict], keys: tuple[str, ...] = ("p50", "p99", "rps", "p99_16", "cpu_ms")) -> dict:
    """Each of `measure`'s figures named in `keys`, its median over `runs`."""
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def in_turn(targets: list[tuple], seconds: int, rounds: int) -> dict[str, list[dict]]:
    """Measures each (label, process, path, body) in turn, `rounds` times, each round starting
    one further along; each label's figures, round by round."""
    results: dict[str, list[dict]] = {label: [] for label, *_ in targets}
    for round_ in range(rounds):
        for label, target, path, body in rotated(targets, round_):
            results[label].append(measure(target, target.url + path, body, seconds))
    return results


def alternated(simulator, direct: dict, setups: list, seconds: int, rounds: int) -> dict[str, dict]:
    """Our service in each setup, all running side by side and measured in turn `rounds`
    times (each round in another order), so drift on a shared machine hits every setup alike;
    prints and returns the medians of the rounds."""
    print("| setup | p50 ms (1 conn) | p99 ms (1 conn) | added p50 ms | req/s (16 conn) | CPU ms/req | errors |")
    print("|---|---|---|---|---|---|---|")
    with contextlib.ExitStack() as stack:
        targets = []
        for label, env in setups:
            # `{counts}` in a setting: a fresh directory on tmpfs, as gunicorn.conf.py makes.
            counts = stack.enter_context(tempfile.TemporaryDirectory(prefix="kimi-bench-counts-", dir="/dev/shm"))
            target = start_service(simulator.url, **{name: value.format(counts=counts) for name, value in env.items()})
            stack.callback(target.stop)
            targets.append((label, target, "/api/chat/completion", {"message": "hello"}))
        results = in_turn(targets, seconds, rounds)
    rows = {}
    for label, runs in results.items():
        rows[label] = r = medians(runs)
        errors = sum(run["errors"] for run in runs)
        print(f"| {label} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p50'] - direct['p50']:.2f} | {r['rps']:.0f} | "
              f"{r['cpu_ms']:.2f} | {errors} |", flush=True)
    return rows


def fresh_pairs(simulator, setups: list, seconds: int, rounds: int) -> list[dict[str, dict]]:
    """Each round starts every setup's service afresh, measures them in turn (the order turning
    each round) and stops them; each round's figures by label."""
    results = []
    for round_ in range(rounds):
        with contextlib.ExitStack() as stack:
            figures = {}
            for label, env in rotated(setups, round_):
                target = start_service(simulator.url, **env)
                stack.callback(target.stop)
                figures[label] = measure(target, target.url + "/api/chat/completion", {"message": "hello"}, seconds)
        results.append(figures)
    return results


def median_interval(values: list[float], resamples: int = 4000) -> tuple[float, float, float]:
    """The median of `values` and a 95 % bootstrap (percentile) interval around it; the
    resampling is seeded, so the same values give the same interval."""
    draw = random.Random(13)
    resampled = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.median(values), resampled[int(0.025 * resamples)], resampled[int(0.975 * resamples) - 1]


def store_cost(simulator, direct: dict, seconds: int, rounds: int) -> None:
    """What counting in the host-shared store costs per request, against in-process memory."""
    print("\n## /api/chat/completion with the limits counted in memory and in the host-shared store\n")
    rows = alternated(simulator, direct, STORE_SETUPS, seconds, rounds)
    memory, shared, default = (rows[label] for label, _ in STORE_SETUPS)
    print(f"| **shared / memory, 1 worker** | | | | **{shared['rps'] / memory['rps']:.2f}x** | "
          f"{shared['cpu_ms'] / memory['cpu_ms']:.2f}x (+{(shared['cpu_ms'] - memory['cpu_ms']) * 1000:.0f} us) | |")
    print(f"| **default / 1 worker memory** | | | | **{default['rps'] / memory['rps']:.2f}x** | "
          f"{default['cpu_ms'] / memory['cpu_ms']:.2f}x | |", flush=True)


def against_min_proxy(simulator, direct: dict, seconds: int, rounds: int) -> None:
    """Our service and the reference minimal proxy under each worker model of SETUPS, both
    running side by side and measured in turn `rounds` times (each round in another order):
    medians, and the median of the rounds' ratios. Measured one after the other instead, the
    two once came out 0.73x apart in throughput and, loaded in turn right after, 0.99x."""
    print("\n## /api/chat/completion: latency at 1 connection, throughput at 16 "
          f"(ours and min_proxy measured in turn, {rounds} rounds)\n")
    print("| setup | target | p50 ms (1 conn) | p99 ms (1 conn) | added p50 ms | req/s (16 conn) | p99 ms (16 conn) | CPU ms/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| — | simulator direct | {direct['p50']:.2f} | {direct['p99']:.2f} | — | {direct['rps']:.0f} | {direct['p99_16']:.2f} | — | {direct['errors']} |")
    body = {"message": MESSAGE, "model": DEFAULT_MODEL}
    for label, service_env, proxy_args in SETUPS:
        with contextlib.ExitStack() as stack:
            targets = []
            for name, start in (("min_proxy", lambda: start_min_proxy(simulator.url, proxy_args)),
                                ("kimi-backend", lambda: start_service(simulator.url, **service_env))):
                target = start()
                stack.callback(target.stop)
                targets.append((name, target, "/api/chat/completion", body))
            results = in_turn(targets, seconds, rounds)
        rows = {}
        for name, runs in results.items():
            rows[name] = r = medians(runs)
            print(f"| {label} | {name} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p50'] - direct['p50']:.2f} | "
                  f"{r['rps']:.0f} | {r['p99_16']:.2f} | {r['cpu_ms']:.2f} | {sum(run['errors'] for run in runs)} |")
        ours, floor = rows["kimi-backend"], rows["min_proxy"]
        added_ratio = (ours["p50"] - direct["p50"]) / max(1e-9, floor["p50"] - direct["p50"])
        pairs = list(zip(results["kimi-backend"], results["min_proxy"]))
        throughput = statistics.median(a["rps"] / b["rps"] for a, b in pairs)
        cpu = statistics.median(a["cpu_ms"] / b["cpu_ms"] for a, b in pairs)
        print(f"| {label} | **ratio** | | | **{added_ratio:.2f}x** added latency | **{throughput:.2f}x** throughput | | "
              f"{cpu:.2f}x | |", flush=True)


def litellm_comparison(simulator, direct: dict, seconds: int, rounds: int) -> None:
    """Our service (one gevent worker) on both routes and LiteLLM's proxy (one worker) on its
    `/v1/chat/completions`, same upstream and load, all three running and measured in turn
    `rounds` times, so drift on a shared machine hits each alike; medians, and the median of
    the rounds' throughput ratios."""
    print("\n## Against LiteLLM's proxy (one process each, measured in turn)\n")
    openai_body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": MESSAGE}]}
    ours = start_service(simulator.url, **SETUPS[0][1])
    litellm = start_litellm(simulator.url, DEFAULT_MODEL)
    if litellm is None:
        ours.stop()
        return
    targets = [("kimi-backend /api", ours, "/api/chat/completion", {"message": MESSAGE, "model": DEFAULT_MODEL}),
               ("kimi-backend /v1", ours, "/v1/chat/completions", openai_body),
               ("litellm /v1", litellm, "/v1/chat/completions", openai_body)]
    try:
        results = in_turn(targets, seconds, rounds)
    finally:
        ours.stop()
        litellm.stop()
    print("| target | p50 ms (1 conn) | p99 ms (1 conn) | added p50 ms | req/s (16 conn) | p99 ms (16 conn) | CPU ms/req | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        r = medians(runs)
        print(f"| {name} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p50'] - direct['p50']:.2f} | {r['rps']:.0f} | "
              f"{r['p99_16']:.2f} | {r['cpu_ms']:.2f} | {sum(run['errors'] for run in runs)} |")
    lite = results["litellm /v1"]
    for route in ("/v1", "/api"):
        ratios = [run["rps"] / other["rps"] for run, other in zip(results[f"kimi-backend {route}"], lite)]
        print(f"| **vs LiteLLM, {route}** | | | | **{statistics.median(ratios):.1f}x** throughput "
              f"(rounds: {', '.join(f'{ratio:.1f}x' for ratio in ratios)}) | | | |", flush=True)


def usage_overhead(simulator, direct: dict, seconds: int, rounds: int) -> None:
    """Our service (one gevent worker) with the ledger and budgets off and on, both started
    afresh in each of `rounds` rounds: the medians of each, then the median of the rounds'
    on/off ratios with its 95 % bootstrap interval."""
    print(f"\n## /api/chat/completion with the usage ledger and token budgets off and on (1 gevent worker, "
          f"{rounds} rounds of {seconds} s, fresh processes each round)\n")
    (off_label, _), (on_label, _) = USAGE_SETUPS
    runs = fresh_pairs(simulator, USAGE_SETUPS, seconds, rounds)
    print("| setup | p50 ms (1 conn) | p99 ms (1 conn) | added p50 ms | req/s (16 conn) | CPU ms/req | errors |")
    print("|---|---|---|---|---|---|---|")
    for label in (off_label, on_label):
        r = medians([run[label] for run in runs])
        print(f"| {label} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p50'] - direct['p50']:.2f} | {r['rps']:.0f} | "
              f"{r['cpu_ms']:.2f} | {sum(run[label]['errors'] for run in runs)} |")
    ratios = {
        "added": [(run[on_label]["p50"] - direct["p50"]) / max(1e-9, run[off_label]["p50"] - direct["p50"]) for run in runs],
        "rps": [run[on_label]["rps"] / run[off_label]["rps"] for run in runs],
        "cpu": [run[on_label]["cpu_ms"] / run[off_label]["cpu_ms"] for run in runs],
    }
    cells = {key: "{:.3f}x ({:.3f}-{:.3f})".format(*median_interval(values)) for key, values in ratios.items()}
    print(f"| **on / off**, median of the rounds (95 % interval) | | | **{cells['added']}** | **{cells['rps']}** | "
          f"{cells['cpu']} | |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--usage-only", action="store_true", help="only the ledger and budgets off/on comparison")
    parser.add_argument("--usage-rounds", type=int, default=3,
                        help="rounds of the min_proxy, LiteLLM and store comparisons")
    parser.add_argument("--pair-rounds", type=int, default=PAIR_ROUNDS,
                        help="rounds of the ledger off/on comparison, each with fresh processes")
    parser.add_argument("--pair-seconds", type=int, default=PAIR_SECONDS,
                        help="seconds of each measurement in those rounds")
    parser.add_argument("--store-only", action="store_true", help="only the memory / shared store comparison")
    parser.add_argument("--litellm-only", action="store_true", help="only the comparison with LiteLLM's proxy")
    parser.add_argument("--floor-only", action="store_true", help="only the comparison with the reference proxy")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    simulator = start_simulator()
    try:
        direct = measure(None, simulator.url + "/chat/completions",
                         {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": MESSAGE}]},
                         args.seconds, {"Authorization": f"Bearer {BENCH_KEY}"})
        if args.usage_only:
            usage_overhead(simulator, direct, args.pair_seconds, args.pair_rounds)
            return 0
        if args.store_only:
            store_cost(simulator, direct, args.seconds, args.usage_rounds)
            return 0
        if args.litellm_only:
            litellm_comparison(simulator, direct, args.seconds, args.usage_rounds)
            return 0
        if args.floor_only:
            against_min_proxy(simulator, direct, args.seconds, args.usage_rounds)
            return 0
        against_min_proxy(simulator, direct, args.seconds, args.usage_rounds)
        litellm_comparison(simulator, direct, args.seconds, args.usage_rounds)
        usage_overhead(simulator, direct, args.pair_seconds, args.pair_rounds)
        store_cost(simulator, direct, args.seconds, args.usage_rounds)
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
