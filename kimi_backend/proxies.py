"""What the service believes about a request's client address and scheme when reverse
proxies sit in front (`TRUSTED_PROXY_COUNT`)."""
from __future__ import annotations

from typing import Callable, Iterable

from werkzeug.middleware.proxy_fix import ProxyFix

# The forwarding headers ProxyFix reads, plus the ones flask-talisman reads directly.
_FORWARDED_KEYS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                   "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX")


class IgnoreForwardedHeaders:
    """WSGI middleware for a service with no trusted proxy: any `X-Forwarded-*` header was
    written by the client, so it is removed before anything (the limiter's client address,
    the HTTPS redirect, HSTS) could believe it."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        for key in _FORWARDED_KEYS:
            environ.pop(key, None)
        return self.app(environ, start_response)


def trust_proxies(wsgi_app: Callable, count: int) -> Callable:
    """Wraps the WSGI app to trust exactly `count` proxies' `X-Forwarded-For/Proto/Host/Port/
    Prefix` hops (each proxy appends one), or none at all when `count` is 0."""
    if count == 0:
        return IgnoreForwardedHeaders(wsgi_app)
    return ProxyFix(wsgi_app, x_for=count, x_proto=count, x_host=count, x_port=count, x_prefix=count)
