"""The app's side of a graceful stop: on SIGTERM the worker (workers.py) calls `begin`, and
open streams end themselves in-band, with a `shutting_down` event and `[DONE]` (one still
waiting for the upstream's headers with a 503 `shutting_down`), and non-streamed calls still
waiting for their reply are answered that 503, before the graceful timeout runs out and
gunicorn would cut them silently."""
from __future__ import annotations

import time

# Streams end this long before the graceful timeout (at most half of it): enough to send
# the last events and write the access line before gunicorn gives up on the worker.
MARGIN_S = 2.0


class Shutdown:
    """Whether this process is stopping, and when its streams must be over."""

    def __init__(self) -> None:
        self._deadline: float | None = None

    def begin(self, graceful_timeout_s: float) -> None:
        """Marks the stop; called from the worker's SIGTERM handler (so it only sets a value)."""
        self._deadline = time.monotonic() + max(0.0, graceful_timeout_s - min(MARGIN_S, graceful_timeout_s / 2))

    def streams_must_end(self) -> bool:
        """True once streams, and calls still waiting for the upstream, have to end to finish
        inside the graceful timeout."""
        return self._deadline is not None and time.monotonic() >= self._deadline
