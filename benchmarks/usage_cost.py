"""Issue 13's work per chat request, measured alone in one process: reserving and settling two
budgets (per client and for the service) in the memory storage, the ledger row and its
queueing, and its share of the SQLite batch insert. CPU time of one process varies far less
on a shared machine than throughput does, so this says what the ledger and budgets add to a
request's CPU (compare with `latency.py`'s CPU ms/req of the whole service).

    python benchmarks/usage_cost.py [--requests 20000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.procs import scratch_dir  # noqa: E402
from kimi_backend.config import load_settings  # noqa: E402
from kimi_backend.memory_counts import MemoryCounts  # noqa: E402
from kimi_backend.moonshot.models import DEFAULT_MODEL  # noqa: E402
from kimi_backend.observability.access_log import Exchange  # noqa: E402
from kimi_backend.usage.budgets import Budgets  # noqa: E402
from kimi_backend.usage.cost import cost_of  # noqa: E402
from kimi_backend.usage.ledger import Ledger, usage_row  # noqa: E402
from kimi_backend.usage.schema import make_engine, migrate  # noqa: E402

PAYLOAD = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hello"}]}
USAGE = {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}


def finished_exchange() -> Exchange:
    """The record of a completed `/api/chat/completion`, as the service leaves it."""
    exchange = Exchange("5bd84d5b84b24df3bf03f2d7d2555127", "POST", "/api/chat/completion", False)
    exchange.route, exchange.status, exchange.outcome = "/api/chat/completion", 200, "ok"
    exchange.model = exchange.requested_model = DEFAULT_MODEL
    exchange.usage = USAGE
    return exchange


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    settings = load_settings({}, {"TOKEN_BUDGET_PER_DAY": "1000000000000", "TOKEN_BUDGET_TOTAL_PER_DAY": "1000000000000"})
    storage = MemoryCounts()  # what `memory://` is in the service
    budgets = Budgets(settings, lambda: storage)
    engine = make_engine(f"sqlite:///{scratch_dir('usage-')}/usage.sqlite3")
    migrate(engine)
    # A writer that never runs on its own: the insert is timed separately below.
    ledger = Ledger(engine, queue_size=args.requests, flush_interval_s=3600)
    ledger._writer = object()
    exchange = finished_exchange()

    started = time.process_time()
    for _ in range(args.requests):
        charge = budgets.reserve("ip:127.0.0.1", PAYLOAD)
        cost = cost_of(exchange, charge)
        charge.settle(cost.total)
    budget_us = (time.process_time() - started) / args.requests * 1e6

    started = time.process_time()
    for _ in range(args.requests):
        ledger.record(usage_row(exchange, charge, cost))
    row_us = (time.process_time() - started) / args.requests * 1e6

    rows = list(ledger._rows)
    ledger._rows.clear()
    started = time.process_time()
    for at in range(0, len(rows), 500):
        ledger._write(rows[at:at + 500])
    insert_us = (time.process_time() - started) / args.requests * 1e6

    print("\n## CPU the usage ledger and token budgets add to one chat request (one process)\n")
    print("| part | CPU µs/request |")
    print("|---|---|")
    print(f"| reserve + settle, two budgets (memory storage) | {budget_us:.1f} |")
    print(f"| ledger row + queue | {row_us:.1f} |")
    print(f"| batch insert into SQLite (batches of 500) | {insert_us:.1f} |")
    print(f"| **total** | **{budget_us + row_us + insert_us:.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
