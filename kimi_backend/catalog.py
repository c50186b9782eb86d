"""The model list: the upstream's `/v1/models`, cached, with the model table's current models
as the fallback for when the upstream has no list or cannot be reached."""
from __future__ import annotations

import threading
import time

from .errors import UpstreamError
from .moonshot.client import MoonshotClient
from .moonshot.models import CURRENT, describe, facts_for, model_item

# After a failed fetch, serve the fallback this long before asking the upstream again.
FAILURE_TTL_S = 30.0
# A model list is small: an upstream that takes longer than this is not going to send one.
FETCH_TIMEOUT_S = 5.0


class ModelCatalog:
    """Thread-safe cache of the upstream's model list. One caller refreshes it at a time;
    everyone else is answered at once from the list in hand (stale, or the fallback)."""

    def __init__(self, client: MoonshotClient, ttl_s: float, allowed: tuple[str, ...] = ()):
        self._client = client
        self._ttl_s = ttl_s
        self._allowed = set(allowed)
        self._refreshing = threading.Lock()
        self._models: list[dict] = _fallback()
        self._served: frozenset[str] | None = None
        self._expires = 0.0

    def models(self) -> tuple[list[dict], str]:
        """The models (filtered by ALLOWED_MODELS) and where they came from: "upstream" or
        "fallback". Items the model table knows carry its facts (thinking, fixed sampling)."""
        self._refresh_if_due()
        models, source = self._models, "fallback" if self._served is None else "upstream"
        if self._allowed:
            models = [model for model in models if model["id"] in self._allowed]
        return models, source

    def served_ids(self) -> frozenset[str] | None:
        """The ids the upstream's list names, or None when it has no list (or is unreachable)."""
        self._refresh_if_due()
        return self._served

    def _refresh_if_due(self) -> None:
        if time.monotonic() < self._expires or not self._refreshing.acquire(blocking=False):
            return
        try:
            if time.monotonic() >= self._expires:
                self._refresh()
        finally:
            self._refreshing.release()

    def _refresh(self) -> None:
        try:
            fetched = self._client.list_models(FETCH_TIMEOUT_S)
        except UpstreamError:
            fetched = []
        if fetched:
            self._models = [_with_facts(item) for item in fetched]
            self._served = frozenset(item["id"] for item in fetched)
            self._expires = time.monotonic() + self._ttl_s
        else:
            self._models, self._served = _fallback(), None
            self._expires = time.monotonic() + min(self._ttl_s, FAILURE_TTL_S)


def _fallback() -> list[dict]:
    return [_with_facts(model_item(facts)) for facts in CURRENT]


def _with_facts(item: dict) -> dict:
    facts = facts_for(item["id"])
    return item | describe(facts) if facts is not None else item
