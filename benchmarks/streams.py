"""Issue 3's benchmark: N clients each open a ~10-second stream at the same moment, straight
to the simulator and through our service (as `make run` starts it): completed, wall time,
median, p95 and p99 time to the first event, and peak memory.

    python benchmarks/streams.py [--counts 100 500 1000]

The load generator is one asyncio process on raw sockets, so it costs little CPU of its own.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.procs import BENCH_KEY, start_min_proxy, start_service, start_simulator  # noqa: E402
from kimi_backend.moonshot.models import DEFAULT_MODEL  # noqa: E402
from kimi_backend.system import raise_open_files_limit  # noqa: E402

# 21 content chunks 0.5 s apart: a 10-second stream whose first token comes at once.
STREAM_DIRECTIVES = "sim:chunks=21 sim:interval=0.5 sim:reasoning=0"


async def one_stream(host: str, port: int, request: bytes, start: asyncio.Event) -> dict:
    """Sends one stream request when `start` fires; returns when it ended and its first event."""
    await start.wait()
    began = time.monotonic()
    first_event = None
    received = b""
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        while True:
            block = await asyncio.wait_for(reader.read(65536), timeout=60)
            if not block:
                break
            received += block
            if first_event is None and b"\ndata: " in received:
                first_event = time.monotonic() - began
            if b"data: [DONE]" in received:
                break
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        return {"ok": False, "error": type(exc).__name__, "first": first_event, "end": time.monotonic() - began}
    ok = received.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in received and b'"error"' not in received
    return {"ok": ok, "first": first_event, "end": time.monotonic() - began, "error": None if ok else received[:200]}


async def burst(url: str, path: str, body: dict, headers: dict, count: int,
                reader=None) -> tuple[list[dict], float]:
    """Opens `count` streams at the same moment, each read by `reader` (`one_stream` unless
    given); returns their results and the wall time."""
    reader = reader or one_stream
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
    start = asyncio.Event()
    tasks = [asyncio.create_task(reader(host, int(port), request, start)) for _ in range(count)]
    await asyncio.sleep(0.2)  # let every task reach start.wait(): all begin together
    began = time.monotonic()
    start.set()
    results = await asyncio.gather(*tasks)
    return results, time.monotonic() - began


def summarize(results: list[dict], wall: float) -> dict:
    """Completed count, wall time, median, p95 and p99 time to first event."""
    firsts = sorted(r["first"] for r in results if r["first"] is not None)

    def percentile(share: float) -> float:
        return firsts[min(len(firsts) - 1, int(len(firsts) * share))] if firsts else float("nan")
    return {"completed": sum(r["ok"] for r in results), "wall": wall,
            "median_first": statistics.median(firsts) if firsts else float("nan"),
            "p95_first": percentile(0.95), "p99_first": percentile(0.99)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--service-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra environment for the service, e.g. WORKER_CLASS=gthread GUNICORN_THREADS=1100")
    parser.add_argument("--no-reference", action="store_true", help="skip the min_proxy rows")
    args = parser.parse_args(argv)
    raise_open_files_limit()  # hundreds of streams at once, two sockets each

    simulator = start_simulator()
    service = start_service(simulator.url, **dict(pair.split("=", 1) for pair in args.service_env))
    # The reference floor, with our default worker model (one gevent process).
    floor = None if args.no_reference else start_min_proxy(
        simulator.url, ["-k", "gevent", "-w", "1", "--worker-connections", "2000"])
    print("\n## Concurrent 10-second streams opened at the same moment\n")
    print("| streams | target | completed | wall s | median first event s | p95 first event s | p99 first event s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for count in args.counts:
            direct = asyncio.run(burst(simulator.url, "/v1/chat/completions",
                                       {"model": DEFAULT_MODEL, "stream": True,
                                        "messages": [{"role": "user", "content": f"story {STREAM_DIRECTIVES}"}]},
                                       {"Authorization": f"Bearer {BENCH_KEY}"}, count))
            rows = [("simulator direct", direct, simulator)]
            if floor:
                rows.append(("min_proxy (reference)", asyncio.run(
                    burst(floor.url, "/api/chat/stream", {"messages": f"story {STREAM_DIRECTIVES}", "model": DEFAULT_MODEL}, {}, count)), floor))
            rows.append(("kimi-backend", asyncio.run(
                burst(service.url, "/api/chat/stream", {"messages": f"story {STREAM_DIRECTIVES}"}, {}, count)), service))
            for name, (results, wall), proc in rows:
                s = summarize(results, wall)
                print(f"| {count} | {name} | {s['completed']}/{count} | {s['wall']:.2f} | {s['median_first']:.3f} | "
                      f"{s['p95_first']:.3f} | {s['p99_first']:.3f} | {proc.peak_rss_mb():.0f} |", flush=True)
                failures = [r["error"] for r in results if not r["ok"]][:3]
                if failures:
                    print(f"|  | first failures: {failures} | | | | | | |", flush=True)
    finally:
        service.stop()
        if floor:
            floor.stop()
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
