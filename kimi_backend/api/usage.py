"""`GET /api/usage` (admin): requests and tokens from the usage ledger, summed by client,
model or day over a range of UTC days, as JSON or CSV."""
from __future__ import annotations

import csv
import io
import logging
from datetime import date
from typing import Literal

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.exc import SQLAlchemyError

from ..admin import require_admin_key
from ..errors import ApiError
from ..extensions import limiter
from ..usage.report import COLUMNS, totals
from .openapi import listed

log = logging.getLogger("kimi_backend")

bp = Blueprint("usage", __name__, url_prefix="/api")
bp.before_request(require_admin_key)
limiter.limit_api(bp)

# Spreadsheets run cells that start with these as formulas; client-chosen text (a model id)
# must not.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class UsageQuery(BaseModel):
    """`GET /api/usage` query parameters."""

    model_config = ConfigDict(extra="forbid")

    group_by: Literal["client", "model", "day"] = Field(default="client", description="How to group the totals.")
    from_: date | None = Field(default=None, alias="from", description="First UTC day (YYYY-MM-DD), inclusive.")
    to: date | None = Field(default=None, description="Last UTC day (YYYY-MM-DD), inclusive.")
    format: Literal["json", "csv"] = Field(default="json", description="csv for spreadsheets.")

    @model_validator(mode="after")
    def _range_in_order(self) -> "UsageQuery":
        if self.from_ and self.to and self.from_ > self.to:
            raise ValueError("'from' must not be after 'to'")
        return self


def _query() -> UsageQuery:
    try:
        return UsageQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = f"Query parameter '{error['loc'][0]}'" if error["loc"] else "The query"
        raise ApiError(400, "invalid_request", f"{where} is invalid: {error['msg'].removeprefix('Value error, ')}.") from None


def _cell(value) -> str | int:
    text = value if isinstance(value, int) else str(value)
    return "'" + text if isinstance(text, str) and text.startswith(_FORMULA_START) else text


@bp.get("/usage")
@listed("Admin (x-admin-key): requests and tokens by client, model or day")
def usage():
    """Requests and tokens from the usage ledger, grouped by client, model or day (admin)."""
    query = _query()
    ledger = current_app.extensions["usage_ledger"]
    if ledger is None:
        raise ApiError(404, "usage_ledger_disabled", "The usage ledger is off (USAGE_LEDGER=false), so there is nothing to report.")
    try:
        rows = totals(ledger.engine, query.group_by, query.from_, query.to)
    except SQLAlchemyError as exc:
        log.error("usage report failed: the usage database did not answer (%s)", type(exc).__name__)
        raise ApiError(503, "usage_database_unavailable", "The usage database is not answering; retry shortly.",
                       {"Retry-After": "5"}) from None
    if query.format == "json":
        return jsonify(success=True, data=rows)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow((query.group_by, *COLUMNS))
    writer.writerows([_cell(row[query.group_by]), *(row[name] for name in COLUMNS)] for row in rows)
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="kimi-usage-by-{query.group_by}.csv"'})


usage.query_schema = UsageQuery
