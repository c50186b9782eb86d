"""Daily token budgets (UTC days): per client (`TOKEN_BUDGET_PER_DAY`, per key
`TOKEN_BUDGETS`), for the whole service (`TOKEN_BUDGET_TOTAL_PER_DAY`), and a browser
token's own (`g.token_budget`), counted in the limiter's storage so every worker and host
shares one count.

Reserve, then settle: before the upstream call a request reserves its prompt estimate plus
its output budget in every budget that applies, and is refused when one does not have that
much left (and gives back what it added to the others); when it ends, the reservation becomes
what it really cost. Each step adds to all of a request's budgets at once, every addition
atomic (in memory one call; in the store several workers share one SQLite statement; in
Redis an INCRBY each), so concurrent requests can never together reserve more than a budget
holds. A request that one budget refuses holds its reservation in the others until it gives
it back, a step later: in memory under gevent nothing runs in between; elsewhere another
request may, for that moment, see those budgets fuller than they are (the safe side).
"""
from __future__ import annotations

import functools
import logging
import math
from datetime import date, datetime, timedelta, timezone
from typing import Callable, NamedTuple

from limits.errors import StorageError
from limits.storage import Storage

from ..config.settings import Settings
from ..errors import ApiError
from ..observability.metrics import BUDGET_REFUSALS, BUDGET_SETTLE_FAILURES
from . import estimate

log = logging.getLogger("kimi_backend")

DAY = timedelta(days=1)
# Counters outlive their day by at least this much, so a stream that began before midnight
# settles into the day it was reserved in (a new day's requests count in a new key).
GRACE = timedelta(days=1)
# A counter's lifetime from its first count, the same for all: begun at any moment of its day,
# it lasts the rest of that day and GRACE more. (The day's end less now, worked out per
# request, cost more than what a counter alive a little longer costs.)
COUNTER_LIFETIME_S = int((DAY + GRACE).total_seconds())
KEY_PREFIX = "kimi:budget"
# The clients whose budgets are kept listed (see `applicable`); past it, the list starts over.
LISTS_KEPT = 10_000

# How each budget is named to the caller when it refuses.
WHOSE = {"client": "Your daily token budget", "token": "This token's daily budget",
         "service": "This service's daily token budget"}


def utc_now() -> datetime:
    """The real clock (tests give `Budgets.clock` another)."""
    return datetime.now(timezone.utc)


class Budget(NamedTuple):
    """One budget that applies to a request: its scope, its daily limit, its counter."""

    scope: str  # "client", "token" or "service"
    limit: int
    key: str


class _Listed(NamedTuple):
    """The budgets that apply to a client, their counters' keys, and which of them are the
    caller's own (all but the service's): (position, limit) each."""

    budgets: tuple[Budget, ...]
    keys: tuple[str, ...]
    own: tuple[tuple[int, int], ...]


class _Day(NamedTuple):
    """What the requests of one UTC day share: their counters' key prefix, and the budgets of
    the clients seen that day."""

    day: date
    key_prefix: str
    lists: dict[tuple, _Listed]  # (identity, token budget, address) -> its budgets


class Charge:
    """One request's reservation: which budgets hold how much, until `settle()`."""

    __slots__ = ("identity", "started", "prompt_estimate", "reserved", "settle_add", "budgets", "keys", "own",
                 "counts", "refused", "used_before", "settled")

    def __init__(self, identity: str, started: datetime, prompt_estimate: int, reserved: int):
        self.identity = identity
        self.started = started
        self.prompt_estimate = prompt_estimate
        self.reserved = reserved
        # Adds to each of `keys`, counters the reservation made or renewed: (keys, amount) ->
        # their new counts (`live_counter_adder`).
        self.settle_add: Callable[[tuple[str, ...], int], list[int]] | None = None
        self.budgets: tuple[Budget, ...] = ()  # those that hold a reservation, or held one
        self.keys: tuple[str, ...] = ()  # their counters
        self.own: tuple[tuple[int, int], ...] = ()  # the caller's own among them: (position, limit)
        self.counts: list[int] = []  # each one's counter after our last step
        self.refused: Budget | None = None
        self.used_before = 0
        self.settled = False

    @property
    def day(self) -> date:
        """The UTC day this request counts in."""
        return self.started.date()

    def remaining(self) -> int | None:
        """What is left of the caller's own budgets (its client budget, its token's), or None
        when none applies. Before settling it already excludes this request's reservation."""
        own, counts = self.own, self.counts
        if not own:
            return None
        position, limit = own[0]
        least = limit - counts[position]
        for position, limit in own[1:]:
            least = min(least, limit - counts[position])
        return max(0, least)

    def settle(self, tokens: int) -> None:
        """Turns the reservation into the request's real cost, once. A storage failure here is
        logged and counted, never raised: the request has been answered already."""
        if self.settled:
            return
        self.settled = True
        delta = tokens - self.reserved
        if not delta or not self.budgets:
            return
        try:
            self.counts = self.settle_add(self.keys, delta)
        except StorageError as exc:
            BUDGET_SETTLE_FAILURES.inc()
            log.error("token budget not settled: its storage failed (%s)", type(exc.storage_error).__name__)


def counter_adder(storage: Storage) -> Callable[[tuple[str, ...], int, int], list[int]]:
    """What adds `amount` to several counters of `storage` and returns their new values: all
    of them or, on a storage error, none. The memory and host-shared stores' own `incr_each`
    does it in one call (the shared one in one statement); another storage's, `incr_each`."""
    own = getattr(storage, "incr_each", None)
    return own if own is not None else functools.partial(incr_each, storage)


def live_counter_adder(storage: Storage) -> Callable[[tuple[str, ...], int], list[int]]:
    """What settles a reservation: adds to counters `counter_adder` made or renewed moments
    ago. The memory store under gevent adds without looking at their expiry (`add_to_live`);
    any other storage, as `counter_adder`'s does."""
    if getattr(storage, "greenlets_only", False):
        return storage.add_to_live
    add = counter_adder(storage)
    return lambda keys, amount: add(keys, COUNTER_LIFETIME_S, amount)


def incr_each(storage: Storage, keys: tuple[str, ...], expiry_s: int, amount: int) -> list[int]:
    """Adds `amount` to each counter of a storage with `incr` alone (Redis), one at a time, and
    returns their new values: all of them or, on a storage error, none, taking back what it had
    added (best effort: when that fails too, the error is the same)."""
    counts: list[int] = []
    try:
        for key in keys:
            counts.append(storage.incr(key, expiry_s, amount=amount))
    except StorageError:
        for key in keys[:len(counts)]:
            storage.incr(key, expiry_s, amount=-amount)
        raise
    return counts


class Budgets:
    """The configured budgets, and reserving against them in the limiter's storage."""

    def __init__(self, settings: Settings, storage: Callable[[], Storage]):
        self.per_client = settings.token_budget_per_day
        self.per_key = dict(settings.token_budgets)
        self.total = settings.token_budget_total_per_day
        self.output_reserve = settings.token_budget_output_reserve
        self._storage = storage
        self.clock: Callable[[], datetime] = utc_now
        self._today = _Day(None, "", {})  # type: ignore[arg-type]  # no day yet
        # The limiter's storage last seen, and what reserves and settles in it (it changes
        # when the limiter falls back to memory, and back).
        self._adders: tuple = (None, None, None)

    @property
    def configured(self) -> bool:
        """Whether any budget is set in the configuration (a token's own may still apply)."""
        return self.per_client is not None or bool(self.per_key) or self.total is not None

    def client_limit(self, identity: str) -> int | None:
        """The daily budget of one client: its key's override, else the per-client default."""
        if identity.startswith("key:"):
            return self.per_key.get(identity[4:], self.per_client)
        return self.per_client

    def applicable(self, identity: str, day: date, token_budget: int | None,
                   address: str | None = None) -> tuple[Budget, ...]:
        """The budgets a request of `identity` on `day` counts against; with `address` (an
        anonymous token's caller), that address's client budget too."""
        return self._applicable(self._day(day), identity, token_budget, address).budgets

    def _applicable(self, today: "_Day", identity: str, token_budget: int | None,
                    address: str | None) -> _Listed:
        # A client's budgets, keys included, are the same all day: listed once, they cost a
        # lookup (0.4 against 2.8 µs), and their counters' keys are found by identity.
        asked = (identity, token_budget, address)
        listed = today.lists.get(asked)
        if listed is None:
            if len(today.lists) >= LISTS_KEPT:
                today.lists.clear()
            budgets = self._list(today, identity, token_budget, address)
            own = tuple((position, budget.limit) for position, budget in enumerate(budgets) if budget.scope != "service")
            listed = today.lists[asked] = _Listed(budgets, tuple(budget.key for budget in budgets), own)
        return listed

    def _list(self, today: "_Day", identity: str, token_budget: int | None, address: str | None) -> tuple[Budget, ...]:
        budgets = []
        limit = self.client_limit(identity)
        if limit is not None:
            budgets.append(Budget("client", limit, f"{today.key_prefix}client:{identity}"))
        if address is not None and self.per_client is not None:
            budgets.append(Budget("client", self.per_client, f"{today.key_prefix}client:{address}"))
        if token_budget is not None:
            budgets.append(Budget("token", token_budget, f"{today.key_prefix}token:{identity}"))
        if self.total is not None:
            budgets.append(Budget("service", self.total, f"{today.key_prefix}service"))
        return tuple(budgets)

    def _day(self, day: date) -> "_Day":
        # What every request of a day shares, worked out once a day. (Read once per request:
        # another thread may start the next day meanwhile.)
        today = self._today
        if today.day != day:
            today = self._today = _Day(day, f"{KEY_PREFIX}:{day.isoformat()}:", {})
        return today

    def reserve(self, identity: str, payload: dict, token_budget: int | None = None,
                address: str | None = None) -> Charge:
        """Reserves the payload's prompt estimate plus its output budget in every budget that
        applies. When one cannot hold it, whatever was reserved is given back and the charge
        comes back `refused` (the caller answers 429 with `refusal()`)."""
        now = self.clock()
        prompt = estimate.prompt_tokens(payload)
        amount = prompt + estimate.output_budget(payload, self.output_reserve)
        today = self._day(now.date())
        budgets, keys, own = self._applicable(today, identity, token_budget, address)
        charge = Charge(identity, now, prompt, amount)
        if not budgets:
            return charge
        storage = self._storage()
        if self._adders[0] is not storage:  # worked out once per storage, not per request
            self._adders = (storage, counter_adder(storage), live_counter_adder(storage))
        _, add, charge.settle_add = self._adders
        # Every budget at once (a failure raises with nothing reserved), then the first that
        # cannot hold it refuses, and every counter is given back.
        counts = add(keys, COUNTER_LIFETIME_S, amount)
        charge.budgets, charge.keys, charge.own, charge.counts = budgets, keys, own, counts
        for budget, count in zip(budgets, counts):
            if count > budget.limit:
                charge.refused, charge.used_before = budget, count - amount
                BUDGET_REFUSALS.labels(budget.scope).inc()
                # Best effort: when the storage fails here, the caller sees that error. The
                # counts stay for `remaining()`; nothing is reserved any more, so nothing is settled.
                charge.counts = add(keys, COUNTER_LIFETIME_S, -amount)
                charge.settled = True
                break
        return charge

    def refusal(self, charge: Charge) -> ApiError:
        """The 429 for a refused charge: which budget, what is left, when it resets."""
        budget = charge.refused
        reset = datetime.combine(charge.day + DAY, datetime.min.time(), timezone.utc)
        wait_s = max(1, math.ceil((reset - self.clock()).total_seconds()))
        left = max(0, budget.limit - charge.used_before)
        hours, minutes = divmod(math.ceil(wait_s / 60), 60)
        message = (f"{WHOSE[budget.scope]} is used up: this request may need up to {charge.reserved} tokens "
                   f"(its prompt and max_tokens) and {left} of {budget.limit} are left today. "
                   f"It resets at 00:00 UTC ({reset.strftime('%Y-%m-%dT%H:%M:%SZ')}), in {hours} h {minutes} min.")
        if charge.reserved > budget.limit:
            message += " This request alone needs more than the whole budget: lower its max_tokens."
        return ApiError(429, "token_budget_exceeded", message, {"Retry-After": str(wait_s)})
