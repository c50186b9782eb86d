"""The model list: the upstream's `/v1/models`, cached, with a built-in fallback for when
the upstream has no list or cannot be reached."""
from __future__ import annotations

import threading
import time

from .errors import UpstreamError
from .moonshot.client import MoonshotClient

FALLBACK_MODELS: tuple[dict, ...] = tuple(
    {"id": model_id, "object": "model", "owned_by": "moonshot", "context_length": context}
    for model_id, context in (
        ("moonshot-v1-8k", 8192),
        ("moonshot-v1-32k", 32768),
        ("moonshot-v1-128k", 131072),
        ("moonshot-v1-auto", 131072),
        ("kimi-latest", 131072),
        ("kimi-k2-turbo-preview", 262144),
        ("kimi-k2-thinking", 262144),
        ("kimi-k2.5", 262144),
        ("kimi-k2.6", 262144),
    )
)
# After a failed fetch, serve the fallback this long before asking the upstream again.
FAILURE_TTL_S = 30.0


class ModelCatalog:
    """Thread-safe cache of the upstream's model list."""

    def __init__(self, client: MoonshotClient, ttl_s: float, allowed: tuple[str, ...] = ()):
        self._client = client
        self._ttl_s = ttl_s
        self._allowed = set(allowed)
        self._lock = threading.Lock()
        self._models: list[dict] = []
        self._source = "fallback"
        self._expires = 0.0

    def models(self) -> tuple[list[dict], str]:
        """The models (filtered by ALLOWED_MODELS) and where they came from: "upstream" or "fallback"."""
        with self._lock:
            if time.monotonic() >= self._expires:
                self._refresh()
            models, source = self._models, self._source
        if self._allowed:
            models = [model for model in models if model["id"] in self._allowed]
        return models, source

    def _refresh(self) -> None:
        try:
            fetched = self._client.list_models()
        except UpstreamError:
            fetched = []
        if fetched:
            self._models, self._source = fetched, "upstream"
            self._expires = time.monotonic() + self._ttl_s
        else:
            self._models, self._source = [dict(model) for model in FALLBACK_MODELS], "fallback"
            self._expires = time.monotonic() + min(self._ttl_s, FAILURE_TTL_S)
