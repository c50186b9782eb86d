"""Which browser origins may spend this service's Moonshot balance, enforced on the server.

CORS is enforced by browsers, and only for requests a browser preflights: a `text/plain` or
form POST is a "simple" request that any page can send without asking. So chat routes refuse
a request whose `Origin` is present and not allowed (403 `origin_not_allowed`), and chat
bodies must be `application/json` (415), which no page can send cross-origin unpreflighted.

The service's own pages pass as any allowed origin does, which DNS rebinding could abuse: a
page on a name its attacker points at this service's address is, to the browser, on this
service's own origin. With ALLOWED_HOSTS set, a request naming any other host is refused
first (400 `host_not_allowed`), on every route.
"""
from __future__ import annotations

import ipaddress

from flask import Blueprint, Flask, current_app, request
from werkzeug.sansio.utils import host_is_trusted

from .auth import verified_token
from .errors import ApiError


def require_allowed_origin() -> None:
    """`before_request`: a request carrying an `Origin` that is neither allowed nor this
    service's own (its test page) is refused. Requests without `Origin` (curl, servers, SDKs
    outside browsers) pass: this guards the balance against other sites' pages, not clients.
    A valid browser token carries its own origins, already checked against this one (auth.py):
    the site's backend that minted it decided where it may be used."""
    req = request._get_current_object()  # one context lookup, not one per use of `request`
    origin = req.headers.get("Origin")
    if origin is None or req.method == "OPTIONS" or verified_token() is not None:
        return
    allowed = current_app.config["SETTINGS"].cors_origins
    if "*" in allowed or origin in allowed or origin == f"{req.scheme}://{req.host}":
        return
    raise ApiError(403, "origin_not_allowed", f"Requests from the origin {origin[:200]!r} are not allowed "
                   "(the operator lists the allowed ones in ALLOWED_ORIGINS).")


def require_json_body() -> None:
    """`before_request`: a request with a body must send it as `application/json`."""
    req = request._get_current_object()  # one context lookup, not one per use of `request`
    if req.method in ("GET", "HEAD", "OPTIONS", "DELETE") or req.is_json:
        return
    raise ApiError(415, "unsupported_media_type", "Send the request body as JSON, with 'Content-Type: application/json'.")


def protect(blueprint: Blueprint) -> Blueprint:
    """Puts a chat blueprint's routes under both checks."""
    blueprint.before_request(require_allowed_origin)
    blueprint.before_request(require_json_body)
    return blueprint


# Always answered, as are IP addresses (a health probe's, a container's): DNS rebinding needs
# a name of the attacker's, so neither the loopback name nor an address can come from it.
_ALWAYS_ALLOWED_HOSTS = ("localhost",)


def init_app(app: Flask, allowed_hosts: tuple[str, ...] | None) -> None:
    """With ALLOWED_HOSTS set, refuses requests naming another host (register after the
    request record opens, so refusals are logged, and before anything reads the body or
    counts the request). Unset: no check, at no cost."""
    if allowed_hosts is None:
        return
    allowed = (*allowed_hosts, *_ALWAYS_ALLOWED_HOSTS)

    def require_allowed_host() -> None:
        """`before_request`: 400 `host_not_allowed` for a Host (after the trusted proxies'
        X-Forwarded-Host) that is neither an IP address nor in ALLOWED_HOSTS."""
        host = request.host.lower()
        if host.startswith("["):  # an IPv6 address, with or without a port
            return
        name = host.rpartition(":")[0] if ":" in host else host
        try:
            ipaddress.ip_address(name)
            return
        except ValueError:
            pass
        if not host_is_trusted(name.rstrip("."), allowed):
            raise ApiError(400, "host_not_allowed", f"This service does not answer for the host {name[:200]!r} "
                           "(the operator lists its host names in ALLOWED_HOSTS).")

    app.before_request(require_allowed_host)
