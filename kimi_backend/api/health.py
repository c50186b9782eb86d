"""`/health` (liveness) and `/api/info` (what this service offers)."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify

from .. import __version__
from ..extensions import limiter
from ..service import get_service
from ..usage import budgets_info

bp = Blueprint("health", __name__)
info_bp = Blueprint("info", __name__, url_prefix="/api")
limiter.limit_api(info_bp)

ENDPOINTS = [
    {"method": "GET", "path": "/health", "description": "Liveness check"},
    {"method": "GET", "path": "/api/info", "description": "This document: endpoints, models, auth and limits"},
    {"method": "POST", "path": "/api/chat/completion", "description": "Single-turn chat: {message, model?, system?}"},
    {"method": "POST", "path": "/api/chat/history", "description": "Multi-turn chat: {messages: [{role, content}], model?}"},
    {"method": "POST", "path": "/api/chat/stream", "description": "Streamed chat (server-sent events): {messages: text | [...], model?}"},
    {"method": "GET", "path": "/api/chat/models", "description": "Available models"},
    {"method": "POST", "path": "/v1/chat/completions", "description": "OpenAI-compatible chat completion (streamed or not)"},
    {"method": "GET", "path": "/v1/models", "description": "OpenAI-compatible model list"},
    {"method": "GET", "path": "/health/ready", "description": "Readiness: the upstream and the rate-limit storage answer"},
    {"method": "GET", "path": "/metrics", "description": "Prometheus metrics"},
    {"method": "GET", "path": "/api/openapi.json", "description": "OpenAPI 3.1 document of every route"},
    {"method": "GET", "path": "/api/docs", "description": "The OpenAPI document as a page"},
    {"method": "POST", "path": "/api/tokens", "description": "Mint a browser token (admin key): {subject?, origins?, ttl_s?, token_budget?, rate_limit?}"},
    {"method": "DELETE", "path": "/api/tokens/{subject}", "description": "Revoke every token of a subject (admin key)"},
    {"method": "POST", "path": "/api/session", "description": "An anonymous browser token for a page on an allowed origin (ANONYMOUS_TOKENS)"},
    {"method": "GET", "path": "/api/usage", "description": "Admin (x-admin-key): requests and tokens by client, model or day"},
]


def upstream_mode() -> str:
    """"offline" on the built-in simulator, "live" against Moonshot."""
    return "offline" if current_app.config["SETTINGS"].offline else "live"


@bp.get("/health")
def health():
    """Cheap liveness: the process answers."""
    return jsonify(success=True, message="Kimi API Backend is running",
                   timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                   version=__version__, upstream=upstream_mode())


@info_bp.get("/info")
def info():
    """What this service offers, for a frontend to discover."""
    settings = current_app.config["SETTINGS"]
    models, _ = get_service().models()
    return jsonify(success=True, data={
        "name": "Kimi API Backend",
        "version": __version__,
        "description": "A safe backend between web frontends and Moonshot AI's Kimi chat API.",
        "endpoints": ENDPOINTS,
        "models": [model["id"] for model in models],
        "defaultModel": get_service().policy.default_model,
        "defaultThinking": settings.default_thinking,
        "auth": {"required": settings.require_api_key, "headers": ["x-api-key", "Authorization: Bearer <key>"],
                 "tokens": bool(settings.token_secrets), "anonymousSessions": settings.anonymous_tokens},
        "rateLimit": {"windowMs": settings.rate_limit_window_ms, "maxRequests": settings.rate_limit_max_requests},
        "upstream": {"mode": upstream_mode()},
        "budgets": budgets_info(),
    })
