"""The admin key (`ADMIN_API_KEY`): what guards the routes an operator's own backend calls
(usage reports, minting browser tokens). Unset, those routes do not exist (404)."""
from __future__ import annotations

import hmac

from flask import abort, current_app, request

from .errors import ApiError

ADMIN_HEADER = "x-admin-key"


def require_admin_key() -> None:
    """`before_request` for admin blueprints: 404 while `ADMIN_API_KEY` is unset (the routes
    are disabled), 401 unless `x-admin-key` matches it (compared in constant time)."""
    if request.method == "OPTIONS":
        return
    expected = current_app.config["SETTINGS"].admin_api_key
    if not expected:
        abort(404)
    presented = request.headers.get(ADMIN_HEADER, "").strip()
    if not presented:
        raise ApiError(401, "missing_admin_key", f"This admin route needs the '{ADMIN_HEADER}' header (ADMIN_API_KEY).")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ApiError(401, "invalid_admin_key", "The admin key is not valid.")
