"""Extension objects, created unbound and configured per app through `app.config`."""
from __future__ import annotations

import logging
import math
import time

from flask import Response, current_app
from flask_cors import CORS
from flask_limiter import Limiter

from .auth import client_identity

log = logging.getLogger("kimi_backend")

limiter = Limiter(key_func=client_identity)
cors = CORS()

# One budget per client shared by every API route, as the original service's
# `app.use('/api/', limiter)` had it; health and static routes carry no limit.
api_rate_limit = limiter.shared_limit(lambda: current_app.config["API_RATE_LIMIT"], scope="api")


def add_rate_limit_headers(response: Response) -> Response:
    """`X-RateLimit-Limit/Remaining/Reset` on every limited response, and `Retry-After` on
    the limiter's own 429. (flask-limiter's built-in headers are off because they put a
    Retry-After on every response and overwrite the upstream's own on a forwarded 429.)"""
    current = limiter.current_limit
    if current is None:
        return response
    try:
        reset_at = current.reset_at
        response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(current.remaining)
        response.headers["X-RateLimit-Reset"] = str(reset_at)
        if current.breached:
            response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    except Exception:  # the storage went away after the check: the answer matters more than its headers
        log.warning("rate-limit headers skipped: limiter storage unavailable")
    return response
