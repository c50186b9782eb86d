"""`GET /metrics`: Prometheus text format, optionally behind `METRICS_TOKEN`."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app

from ..auth import bearer_token
from ..errors import ApiError
from ..observability.metrics import CONTENT_TYPE, exposition
from .openapi import listed, produces

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@listed("Prometheus metrics")
@produces("text/plain")
def metrics():
    """The service's metrics, summed over every gunicorn worker."""
    token = current_app.config["SETTINGS"].metrics_token
    if token:
        presented = bearer_token()
        if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
            raise ApiError(401, "invalid_metrics_token", "Metrics need 'Authorization: Bearer <METRICS_TOKEN>'.",
                           {"WWW-Authenticate": 'Bearer realm="kimi-backend-metrics"'})
    return Response(exposition(), content_type=CONTENT_TYPE)
