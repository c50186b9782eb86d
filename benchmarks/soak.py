"""Issue 10's soak: our service (as `make run` starts it) in front of the simulator, kept at
saturation by a mix of completions, streams, bad requests, clients that leave mid-stream and
clients over their rate limit, for a fixed time or a fixed number of requests, whichever comes
first. Prints throughput, p50/p99 latency and statuses per kind (5xx of ours must be zero), and
the service's memory at the start, the middle and the end (it must stay flat).

    python benchmarks/soak.py [--seconds 300] [--requests 100000] [--concurrency 32]

Loopback only. Each simulated client has its own address through `X-Forwarded-For` (the
service trusts one proxy hop here), so rate limits apply per client as they would behind nginx.
The load generator is one asyncio process on raw sockets with keep-alive connections.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.procs import start_service, start_simulator  # noqa: E402

RATE_LIMIT = 150  # requests per client per window: the hot clients pass it soon, the others never
HOT_CLIENTS = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
# A fixed population of ordinary clients (each under its limit over 100,000 requests), so the
# limiter holds a bounded number of counters and memory growth would mean a leak.
CLIENTS = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]
# (kind, weight): the share of each kind of request in the mix.
MIX = [("completion", 50), ("stream", 15), ("bad_request", 15), ("disconnect", 10), ("rate_limited", 10)]
BAD_REQUESTS = [
    ("POST", "/api/chat/completion", "application/json", b"{not json"),
    ("POST", "/api/chat/completion", "text/plain", b'{"message": "hi"}'),
    ("POST", "/api/chat/history", "application/json", b'{"messages": []}'),
    ("POST", "/api/chat/completion", "application/json", json.dumps({"message": "x" * 1_100_000}).encode()),
    ("GET", "/api/chat/completion", None, b""),
    ("GET", "/no-such-page", None, b""),
]


def request_bytes(method: str, path: str, client: str, content_type: str | None = None, body: bytes = b"") -> bytes:
    """One keep-alive HTTP/1.1 request from `client` (as the proxy would forward it)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: {client}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader, stop_at: bytes | None = None) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection may be reused. With `stop_at`, returns as soon
    as the body contains it (the caller then drops the connection, like a client leaving)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            body += chunk[:-2]
            if size == 0:
                break
            if stop_at and stop_at in body:
                return status, body, False
    return status, body, headers.get("connection", "").lower() != "close"


class Soak:
    """The load: `concurrency` clients, each a loop of requests drawn from MIX."""

    def __init__(self, url: str, deadline: float, ceiling: int):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.deadline = deadline
        self.ceiling = ceiling
        self.sent = 0
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.failures: Counter = Counter()

    async def client(self, seed: int) -> None:
        rng = random.Random(seed)
        kinds, weights = zip(*MIX)
        connection = None
        while time.monotonic() < self.deadline and self.sent < self.ceiling:
            self.sent += 1
            kind = rng.choices(kinds, weights)[0]
            if connection is None:
                connection = await asyncio.open_connection(self.host, self.port)
            started = time.monotonic()
            try:
                status, reusable = await self.one(kind, rng, *connection)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                self.failures[f"{kind}: {type(exc).__name__}"] += 1
                status, reusable = 0, False
            self.latencies[kind].append(time.monotonic() - started)
            self.statuses[kind][status] += 1
            if not reusable:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    async def one(self, kind: str, rng: random.Random, reader, writer) -> tuple[int, bool]:
        client = rng.choice(CLIENTS)
        body = b""
        if kind == "completion":
            raw = request_bytes("POST", "/api/chat/completion", client, "application/json",
                                json.dumps({"message": "hello sim:reasoning=0"}).encode())
        elif kind == "stream":
            raw = request_bytes("POST", "/api/chat/stream", client, "application/json",
                                json.dumps({"messages": "story sim:chunks=5 sim:reasoning=0"}).encode())
        elif kind == "disconnect":
            raw = request_bytes("POST", "/api/chat/stream", client, "application/json",
                                json.dumps({"messages": "long story sim:chunks=50 sim:interval=0.05 sim:reasoning=0"}).encode())
        elif kind == "rate_limited":
            raw = request_bytes("POST", "/api/chat/completion", rng.choice(HOT_CLIENTS), "application/json",
                                json.dumps({"message": "hello sim:reasoning=0"}).encode())
        else:
            method, path, content_type, body = rng.choice(BAD_REQUESTS)
            raw = request_bytes(method, path, client, content_type, body)
        writer.write(raw)
        await writer.drain()
        status, _, reusable = await asyncio.wait_for(
            read_response(reader, b'"content":"' if kind == "disconnect" else None), timeout=60)
        return status, reusable and kind != "disconnect"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


async def run(url: str, seconds: float, ceiling: int, concurrency: int, service) -> tuple[Soak, float, list]:
    started = time.monotonic()
    soak = Soak(url, started + seconds, ceiling)
    memory = [("start", 0, service.rss_mb())]

    async def sample_memory() -> None:
        middle_at = started + seconds / 2
        while time.monotonic() < soak.deadline and soak.sent < ceiling:
            await asyncio.sleep(0.5)
            if len(memory) == 1 and (time.monotonic() >= middle_at or soak.sent >= ceiling // 2):
                memory.append(("middle", soak.sent, service.rss_mb()))

    await asyncio.gather(sample_memory(), *(soak.client(seed) for seed in range(concurrency)))
    memory.append(("end", soak.sent, service.rss_mb()))
    return soak, time.monotonic() - started, memory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="or after this long (default 300: a cap for slow machines)")
    parser.add_argument("--requests", type=int, default=100_000, help="or after this many requests (default 100,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once (default 32)")
    args = parser.parse_args(argv)

    simulator = start_simulator()
    service = start_service(simulator.url, TRUSTED_PROXY_COUNT="1", RATE_LIMIT_MAX_REQUESTS=str(RATE_LIMIT),
                            RATE_LIMIT_WINDOW_MS="3600000")
    try:
        soak, wall, memory = asyncio.run(run(service.url, args.seconds, args.requests, args.concurrency, service))
    finally:
        service.stop()
        simulator.stop()
    total = sum(sum(counter.values()) for counter in soak.statuses.values())
    ours_5xx = sum(n for counter in soak.statuses.values() for status, n in counter.items() if status >= 500)
    print(f"\n## Soak: {total:,} requests in {wall:.1f} s ({total / wall:,.0f} req/s), "
          f"{args.concurrency} clients at once, {ours_5xx} answers of 5xx\n")
    print("| kind | requests | p50 ms | p99 ms | statuses |")
    print("|---|---|---|---|---|")
    for kind, _ in MIX:
        latencies = soak.latencies.get(kind, [])
        statuses = ", ".join(f"{status}: {n:,}" for status, n in sorted(soak.statuses[kind].items()))
        print(f"| {kind} | {len(latencies):,} | {statistics.median(latencies) * 1000 if latencies else float('nan'):.1f} | "
              f"{percentile(latencies, 0.99) * 1000:.1f} | {statuses} |")
    if soak.failures:
        print(f"\nTransport failures: {dict(soak.failures)}")
    print("\n| when | requests so far | service RSS MiB |")
    print("|---|---|---|")
    for when, sent, rss in memory:
        print(f"| {when} | {sent:,} | {rss:.1f} |")
    return 1 if ours_5xx else 0


if __name__ == "__main__":
    sys.exit(main())
