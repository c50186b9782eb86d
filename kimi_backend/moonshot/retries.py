"""Where retries of a non-streamed upstream call are decided: which failures, how many, and
how long to wait between them (exponential backoff with full jitter, the upstream's
Retry-After honoured, the waits of one call bounded)."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import UpstreamError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """UPSTREAM_MAX_RETRIES, UPSTREAM_RETRY_BACKOFF_S and UPSTREAM_RETRY_MAX_WAIT_S."""

    max_retries: int
    backoff_s: float
    max_wait_s: float

    def run(self, call: Callable[[], T]) -> T:
        """Runs `call` with up to `max_retries` retries on retryable failures, with exponential
        backoff and full jitter, honouring the upstream's Retry-After. The waits of one call add
        up to at most `max_wait_s`: when the next wait would pass that budget, the failure
        (with its Retry-After) goes to the client instead of keeping it waiting."""
        attempt = 0
        waited = 0.0
        while True:
            try:
                return call()
            except UpstreamError as exc:
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                wait = random.uniform(0, self.backoff_s * (2 ** attempt))
                if exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                if waited + wait > self.max_wait_s:
                    raise
                time.sleep(wait)
                waited += wait
                attempt += 1
