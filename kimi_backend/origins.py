"""Which browser origins may spend this service's Moonshot balance, enforced on the server.

CORS is enforced by browsers, and only for requests a browser preflights: a `text/plain` or
form POST is a "simple" request that any page can send without asking. So chat routes refuse
a request whose `Origin` is present and not allowed (403 `origin_not_allowed`), and chat
bodies must be `application/json` (415), which no page can send cross-origin unpreflighted.
"""
from __future__ import annotations

from flask import Blueprint, current_app, request

from .auth import verified_token
from .errors import ApiError


def require_allowed_origin() -> None:
    """`before_request`: a request carrying an `Origin` that is neither allowed nor this
    service's own (its test page) is refused. Requests without `Origin` (curl, servers, SDKs
    outside browsers) pass: this guards the balance against other sites' pages, not clients.
    A valid browser token carries its own origins, already checked against this one (auth.py):
    the site's backend that minted it decided where it may be used."""
    origin = request.headers.get("Origin")
    if origin is None or request.method == "OPTIONS" or verified_token() is not None:
        return
    allowed = current_app.config["SETTINGS"].cors_origins
    if "*" in allowed or origin in allowed or origin == f"{request.scheme}://{request.host}":
        return
    raise ApiError(403, "origin_not_allowed", f"Requests from the origin {origin[:200]!r} are not allowed "
                   "(the operator lists the allowed ones in ALLOWED_ORIGINS).")


def require_json_body() -> None:
    """`before_request`: a request with a body must send it as `application/json`."""
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE") or request.is_json:
        return
    raise ApiError(415, "unsupported_media_type", "Send the request body as JSON, with 'Content-Type: application/json'.")


def protect(blueprint: Blueprint) -> Blueprint:
    """Puts a chat blueprint's routes under both checks."""
    blueprint.before_request(require_allowed_origin)
    blueprint.before_request(require_json_body)
    return blueprint
