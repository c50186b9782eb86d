"""`GET /metrics`: Prometheus text format, optionally behind `METRICS_TOKEN`."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request

from ..errors import ApiError
from ..metrics import CONTENT_TYPE, exposition

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    """The service's metrics, summed over every gunicorn worker."""
    token = current_app.config["SETTINGS"].metrics_token
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise ApiError(401, "invalid_metrics_token", "Metrics need 'Authorization: Bearer <METRICS_TOKEN>'.",
                           {"WWW-Authenticate": 'Bearer realm="kimi-backend-metrics"'})
    return Response(exposition(), content_type=CONTENT_TYPE)
