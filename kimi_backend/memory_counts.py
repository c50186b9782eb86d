"""The in-process counter store (`memory://`, one worker): `limits`' own memory storage,
counting without a timer thread.

`limits.storage.MemoryStorage.incr` makes sure a timer thread is running that deletes expired
counters 10 ms later; under gevent each such thread is a greenlet spawned, and under load one
is started every 10 ms, a visible share of what counting a request costs. Expiry itself does
not need it (a counter past its expiry is reset when next read, as before); the deletion of
counters nobody reads any more is done here by the increments themselves, at most once every
SWEEP_EVERY_S.

Under gevent an increment takes no lock: nothing in it can switch to another greenlet, so no
other increment runs meanwhile, and the stock per-counter RLock is there the pure-Python
`threading._RLock` (gevent's patched locks leave no C one): an increment costs 1.9 µs without
it against 5.0 µs with it, side by side in one gevent-patched process. A request counts its
rate limit once and, with two token budgets, adds to both twice: `incr_each` to reserve,
`add_to_live` to settle.
"""
from __future__ import annotations

import time

from limits.storage import MemoryStorage

from .system import gevent_patched

# How often an increment deletes the expired counters (clients seen once do not accumulate).
SWEEP_EVERY_S = 10.0


class MemoryCounts(MemoryStorage):
    """`limits`' MemoryStorage, registered for `memory://` in its place, whose `incr` counts
    exactly as the stock one (tests/test_rate_limits.py compares them) minus the timer."""

    STORAGE_SCHEME = ["memory"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.sweep_every_s = SWEEP_EVERY_S
        self._swept_at = time.time()
        # Greenlets only (decided when the storage is made: in the worker, after gevent patched it).
        self.greenlets_only = gevent_patched()

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Adds `amount` to the counter (a new one, or one past its expiry, starts at zero and
        expires `expiry` seconds from now) and returns its value."""
        return self.incr_each((key,), expiry, amount)[0]

    def incr_each(self, keys, expiry: float, amount: int = 1) -> list[int]:
        """`incr` of each counter, in one call: a request's token budgets are two or three
        counters, reserved and then settled together (a call per counter was two Python
        calls each: 8 of the 46 that the budgets added to a request, counted with cProfile)."""
        now = time.time()
        if now - self._swept_at >= self.sweep_every_s:
            self._sweep(now)
        storage, expirations = self.storage, self.expirations
        greenlets_only, counts = self.greenlets_only, []
        for key in keys:
            if expirations.get(key, 0) <= now:
                self._reset(key)
            if greenlets_only:
                count = storage[key] = storage[key] + amount
                if count == amount:
                    expirations[key] = now + expiry
            else:
                with self.locks[key]:
                    count = storage[key] = storage[key] + amount
                    if count == amount:
                        expirations[key] = time.time() + expiry
            counts.append(count)
        return counts

    def add_to_live(self, keys, amount: int) -> list[int]:
        """Adds `amount` to counters an `incr_each` made or renewed moments ago and returns
        their new values: a token budget's settlement, greenlets only. Such a counter outlives
        its reservation by a day at least (`budgets.COUNTER_LIFETIME_S`), so its expiry is
        neither checked nor moved: half of `incr_each`'s work, and every budgeted request
        settles. (A counter cleared in between, by a reset of the storage, holds the amount
        until its next `incr_each` starts it again.)"""
        storage, counts = self.storage, []
        for key in keys:
            count = storage[key] = storage[key] + amount
            counts.append(count)
        return counts

    def _reset(self, key: str) -> None:
        # The stock `get`'s reset of a counter past its expiry: the call, through `limits`'
        # error wrapper, cost about as much as the rest of the increment.
        self.storage.pop(key, None)
        self.expirations.pop(key, None)
        self.locks.pop(key, None)

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for key in [key for key, expires in list(self.expirations.items()) if expires <= now]:
            self.get(key)  # drops the expired counter, as the stock timer would


# `limits` wraps every storage's `incr` in a translator of its driver's errors into StorageError
# (about 0.5 µs a call; a budgeted request makes five). Counting in a dict raises none of them.
MemoryCounts.incr = MemoryCounts.incr.__wrapped__
