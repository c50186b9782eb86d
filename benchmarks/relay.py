"""Issue 15's benchmark: what relaying a stream costs, per chunk, at Kimi's speed.

N clients each read a stream of 500 content chunks 20 ms apart (50 chunks/s, a 10-second
stream), straight from the simulator, through the reference minimal proxy and through our
service (on the original contract's route and on the OpenAI-compatible one), each relay one
gevent process. For each: the relay's CPU time per content chunk
delivered (for the direct row, the simulator's own CPU per chunk produced), how late chunks
arrive (a gap between two chunks beyond the 20 ms the simulator waits), completion and peak
memory. Then the saturation point: the most such streams one process holds with the p99
lateness under 100 ms.

    python benchmarks/relay.py [--streams 200] [--saturation 100 200 300 400 600]

The load generator is one asyncio process on raw sockets; on a small machine it shares the
cores with the relay, the same way for every row.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.streams import burst  # noqa: E402
from benchmarks.procs import BENCH_KEY, Proc, start_min_proxy, start_service, start_simulator  # noqa: E402
from kimi_backend.moonshot.models import DEFAULT_MODEL  # noqa: E402
from kimi_backend.system import raise_open_files_limit  # noqa: E402

CHUNKS = 500
INTERVAL_S = 0.02
# A long reply (the directives' text repeated) split into 500 pieces sent 20 ms apart.
DIRECTIVES = f"story sim:repeat=200 sim:chunks={CHUNKS} sim:interval={INTERVAL_S} sim:reasoning=0"
# A content event with text in it, in every target's framing (the simulator's deltas included).
CONTENT_EVENT = re.compile(rb'"content": ?"(?!")')
LATE_LIMIT_MS = 100.0


async def read_stream(host: str, port: int, request: bytes, start: asyncio.Event) -> dict:
    """Sends one request when `start` fires; returns whether it ended well and the arrival
    time of every content chunk."""
    await start.wait()
    arrivals: list[float] = []
    pending = b""
    head = b""
    done = False
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        while not done:
            block = await asyncio.wait_for(reader.read(65536), timeout=60)
            if not block:
                break
            now = time.monotonic()
            if len(head) < 12:
                head += block[:12]
            *events, pending = (pending + block).split(b"\n\n")
            for item in events:
                if CONTENT_EVENT.search(item):
                    arrivals.append(now)
                elif item.endswith(b"data: [DONE]"):
                    done = True
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return {"ok": False, "arrivals": arrivals}
    return {"ok": done and head.startswith(b"HTTP/1.1 200"), "arrivals": arrivals}


def lateness_p99_ms(results: list[dict]) -> float:
    """The 99th percentile, over every chunk, of how much later than 20 ms after the
    previous one it arrived."""
    late = sorted(max(0.0, (b - a) - INTERVAL_S) * 1000
                  for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:]))
    return late[min(len(late) - 1, int(len(late) * 0.99))] if late else float("nan")


class Target:
    """One way of reading the stream: where, what to send, and whose CPU is the relay's."""

    def __init__(self, name: str, proc: Proc, path: str, body: dict, headers: dict | None = None):
        self.name, self.proc, self.path, self.body, self.headers = name, proc, path, body, headers or {}

    def measure(self, count: int) -> dict:
        """Runs `count` streams and returns completion, relay CPU per chunk and lateness."""
        cpu_before = self.proc.cpu_seconds()
        began = time.monotonic()
        results, _ = asyncio.run(burst(self.proc.url, self.path, self.body, self.headers, count, reader=read_stream))
        wall = time.monotonic() - began
        cpu = self.proc.cpu_seconds() - cpu_before
        chunks = sum(len(r["arrivals"]) for r in results)
        return {"completed": sum(r["ok"] for r in results), "chunks": chunks, "wall": wall,
                "cpu_us_per_chunk": cpu / chunks * 1e6 if chunks else float("nan"),
                "chunks_per_s": chunks / wall, "late_p99_ms": lateness_p99_ms(results),
                "rss_mb": self.proc.peak_rss_mb()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--saturation", type=int, nargs="*", default=[100, 200, 300, 400, 600])
    args = parser.parse_args(argv)
    raise_open_files_limit()  # hundreds of streams at once, two sockets each

    simulator = start_simulator()
    floor = start_min_proxy(simulator.url, ["-k", "gevent", "-w", "1", "--worker-connections", "4000"])
    # One process, as min_proxy runs (the default is now one worker per core).
    service = start_service(simulator.url, WORKER_CONNECTIONS="4000", WEB_CONCURRENCY="1")
    chat = {"messages": DIRECTIVES, "model": DEFAULT_MODEL}
    targets = [
        Target("simulator direct (producing)", simulator, "/v1/chat/completions",
               {"model": DEFAULT_MODEL, "stream": True, "messages": [{"role": "user", "content": DIRECTIVES}]},
               {"Authorization": f"Bearer {BENCH_KEY}"}),
        Target("min_proxy (reference), relaying", floor, "/api/chat/stream", chat),
        Target("kimi-backend /api/chat/stream, relaying", service, "/api/chat/stream", {"messages": DIRECTIVES}),
        Target("kimi-backend /v1/chat/completions, relaying", service, "/v1/chat/completions",
               {"model": DEFAULT_MODEL, "stream": True, "messages": [{"role": "user", "content": DIRECTIVES}]}),
    ]
    try:
        print(f"\n## Relay cost: {args.streams} streams x {1 / INTERVAL_S:.0f} chunks/s, "
              f"{CHUNKS} chunks each, one gevent process\n")
        print("| target | completed | chunks/s delivered | CPU µs per chunk | × reference | p99 lateness ms | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|")
        reference = None
        for target in targets:
            m = target.measure(args.streams)
            if target.proc is floor:
                reference = m["cpu_us_per_chunk"]
            ratio = f"{m['cpu_us_per_chunk'] / reference:.2f}" if reference and target.proc is service else ""
            print(f"| {target.name} | {m['completed']}/{args.streams} | {m['chunks_per_s']:.0f} | "
                  f"{m['cpu_us_per_chunk']:.1f} | {ratio} | {m['late_p99_ms']:.1f} | {m['rss_mb']:.0f} |", flush=True)

        print(f"\n## Saturation: the most {1 / INTERVAL_S:.0f} chunks/s streams one process holds "
              f"with p99 lateness < {LATE_LIMIT_MS:.0f} ms\n")
        print("| target | " + " | ".join(f"{n} streams: done, p99 ms" for n in args.saturation) + " | holds |")
        print("|---|" + "---|" * (len(args.saturation) + 1))
        for target in targets[1:]:
            cells, holds = [], 0
            for count in args.saturation:
                m = target.measure(count)
                cells.append(f"{m['completed']}/{count}, {m['late_p99_ms']:.0f}")
                if m["completed"] == count and m["late_p99_ms"] < LATE_LIMIT_MS:
                    holds = count
                else:
                    break  # more streams only make it later
            cells += [""] * (len(args.saturation) - len(cells))
            print(f"| {target.name} | " + " | ".join(cells) + f" | {holds} |", flush=True)
    finally:
        service.stop()
        floor.stop()
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
