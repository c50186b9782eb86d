"""Reading the ledger: requests and tokens summed by client, model or day over a range of days."""
from __future__ import annotations

from datetime import date

from sqlalchemy import Engine, func, select

from .schema import usage

GROUPS = {
    "client": usage.c.client,
    # The model that answered; the one asked for when none did (a refused request).
    "model": func.coalesce(usage.c.model_served, usage.c.model_requested, ""),
    "day": usage.c.day,
}
COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")


def totals(engine: Engine, group_by: str, since: date | None, until: date | None) -> list[dict]:
    """One dict per group: its key under `group_by`, then the COLUMNS; largest total first
    (by day: oldest first). `since` and `until` are inclusive UTC days."""
    key = GROUPS[group_by].label(group_by)
    query = select(key, func.count().label("requests"),
                   *(func.coalesce(func.sum(usage.c[name]), 0).label(name) for name in COLUMNS[1:]))
    if since is not None:
        query = query.where(usage.c.day >= since)
    if until is not None:
        query = query.where(usage.c.day <= until)
    query = query.group_by(key).order_by(key if group_by == "day" else func.sum(usage.c.total_tokens).desc(), key)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{group_by: row[group_by].isoformat() if isinstance(row[group_by], date) else row[group_by],
             **{name: int(row[name]) for name in COLUMNS}} for row in rows]
