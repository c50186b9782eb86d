"""`/health` (liveness), `/health/ready` (whether this instance can serve chat right now: the
upstream answers, the rate-limit storage answers) and `/api/info` (what this service offers)."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify

from ..errors import UpstreamError, error_body
from ..extensions import limiter
from ..moonshot.client import MoonshotClient
from ..service import get_service
from ..usage import budgets_info
from ..version import __version__
from .openapi import listed, listed_endpoints

bp = Blueprint("health", __name__)
info_bp = Blueprint("info", __name__, url_prefix="/api")
limiter.limit_api(info_bp)
# Its own blueprint, registered after the chat routes: /api/info lists routes in that order.
ready_bp = Blueprint("ready", __name__)

# Check results that still mean "ready": the limiter storage is down but RATE_LIMIT_FAIL_OPEN
# serves on with in-memory limits, which is what fail-open promises.
FALLBACK = "in_memory_fallback"


def upstream_mode() -> str:
    """"offline" on the built-in simulator, "live" against Moonshot."""
    return "offline" if current_app.config["SETTINGS"].offline else "live"


@bp.get("/health")
@listed("Liveness check")
def health():
    """Cheap liveness: the process answers."""
    return jsonify(success=True, message="Kimi API Backend is running",
                   timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                   version=__version__, upstream=upstream_mode())


@info_bp.get("/info")
@listed("This document: endpoints, models, auth and limits")
def info():
    """What this service offers, for a frontend to discover."""
    settings = current_app.config["SETTINGS"]
    service = get_service()
    models, _ = service.models()
    return jsonify(success=True, data={
        "name": "Kimi API Backend",
        "version": __version__,
        "description": "A safe backend between web frontends and Moonshot AI's Kimi chat API.",
        "endpoints": listed_endpoints(current_app),
        "models": [model["id"] for model in models],
        # The model that answers a request naming none (a retired DEFAULT_MODEL's replacement).
        "defaultModel": service.policy.resolve(service.policy.default_model),
        "defaultThinking": settings.default_thinking,
        "auth": {"required": settings.require_api_key, "headers": ["x-api-key", "Authorization: Bearer <key>"],
                 "tokens": bool(settings.token_secrets), "anonymousSessions": settings.anonymous_tokens},
        "rateLimit": {"windowMs": settings.rate_limit_window_ms, "maxRequests": settings.rate_limit_max_requests},
        "upstream": {"mode": upstream_mode()},
        "budgets": budgets_info(),
    })


class UpstreamProbe:
    """Asks the upstream at most once per `cache_s` (per worker) and remembers the answer."""

    def __init__(self, client: MoonshotClient, cache_s: float, timeout_s: float):
        self._client = client
        self._cache_s = cache_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._result = "unknown"
        self._expires = 0.0

    def status(self) -> str:
        """"ok", or the error code of the last probe."""
        with self._lock:
            if time.monotonic() >= self._expires:
                self._result = self._probe()
                self._expires = time.monotonic() + self._cache_s
            return self._result

    def _probe(self) -> str:
        try:
            self._client.probe(self._timeout_s)
        except UpstreamError as exc:
            return exc.code
        return "ok"


@ready_bp.record_once
def _create_probe(state) -> None:
    settings = state.app.config["SETTINGS"]
    client = state.app.extensions["kimi_service"].client
    state.app.extensions["upstream_probe"] = UpstreamProbe(client, settings.ready_cache_s, settings.ready_timeout_s)


def _storage_status() -> str:
    if limiter.storage.check():
        return "ok"
    return FALLBACK if current_app.config["SETTINGS"].rate_limit_fail_open else "unreachable"


@ready_bp.get("/health/ready")
@listed("Readiness: the upstream and the rate-limit storage answer")
def ready():
    """200 when the upstream and the rate-limit storage answer (or the storage is down and
    RATE_LIMIT_FAIL_OPEN serves on without it); 503 naming what failed."""
    checks = {
        "upstream": current_app.extensions["upstream_probe"].status(),
        "rate_limit_storage": _storage_status(),
    }
    failed = [name for name, result in checks.items() if result not in ("ok", FALLBACK)]
    if not failed:
        return jsonify(success=True, status="ready", checks=checks)
    details = ", ".join(f"{name} ({checks[name]})" for name in failed)
    body = error_body("not_ready", f"Not ready: {details} failed the readiness check.")
    response = jsonify(body | {"failed": failed, "checks": checks})
    response.status_code = 503
    return response
