"""What chat requests cost and who may still spend: token budgets checked before each
upstream call and settled after it (budgets.py), and a ledger row per request (ledger.py).

The chat service calls `reserve_tokens(payload)` once its upstream payload is ready; the
request record (`access_log.Exchange`) settles the reservation and writes the ledger row
when the request is over, streams included, however they end.
"""
from __future__ import annotations

import functools

from flask import Flask, Response, current_app, g
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.engine import make_url

from ..auth import client_identity, ip_identity, verified_token
from ..config.parsers import ConfigError
from ..config.settings import Settings
from ..extensions import limiter
from ..observability.access_log import Exchange, current_exchange
from .budgets import Budgets, Charge
from .cost import cost_of
from .ledger import Ledger, open_ledger, usage_row
from .schema import make_engine, migrate

BUDGET_HEADER = "X-Budget-Remaining"


def init_app(app: Flask, settings: Settings) -> None:
    """Sets up the budgets and, with USAGE_LEDGER on, opens the usage database (creating or
    migrating its schema). An unreachable database stops startup with one sentence."""
    app.extensions["token_budgets"] = Budgets(settings, lambda: limiter.limiter.storage)
    app.extensions["usage_ledger"] = connect_ledger(settings) if settings.usage_ledger else None
    # After-request hooks run in reverse order of registration: registered before the
    # request record's, this one runs after it, when a reply's reservation is settled.
    app.after_request(add_budget_header)


def connect_ledger(settings: Settings) -> Ledger:
    """The ledger over USAGE_DATABASE_URL, its schema brought up to date."""
    engine = make_engine(settings.usage_database_url)
    try:
        migrate(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        where = make_url(settings.usage_database_url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"USAGE_DATABASE_URL: the usage database {where} cannot be opened ({reason}).") from None
    return open_ledger(engine, queue_size=settings.usage_queue_size,
                       flush_interval_s=settings.usage_flush_interval_s)


def reserve_tokens(payload: dict) -> None:
    """Reserves the request's tokens in its budgets before the upstream call (429
    `token_budget_exceeded` when one cannot hold them), and arranges for the request, once
    finished, to settle that reservation to its real cost and be written to the ledger."""
    extensions = current_app.extensions
    budgets: Budgets = extensions["token_budgets"]
    # Anyone can start a fresh anonymous session, but not from a fresh address: an anonymous
    # token also spends its caller's address's client budget (as it does its rate limit).
    token = verified_token()
    address = ip_identity() if token is not None and token.anonymous else None
    request_globals = g._get_current_object()  # one context lookup, not one per use of `g`
    charge = budgets.reserve(client_identity(), payload, request_globals.get("token_budget"), address)
    request_globals.token_charge = charge
    current_exchange().on_finish(functools.partial(_settle, charge, extensions["usage_ledger"]))
    if charge.refused is not None:
        raise budgets.refusal(charge)


def _settle(charge: Charge, ledger: Ledger | None, exchange: Exchange) -> None:
    cost = cost_of(exchange, charge)
    charge.settle(cost.total)
    if ledger is not None:
        ledger.record(usage_row(exchange, charge, cost))


def add_budget_header(response: Response) -> Response:
    """`X-Budget-Remaining` on chat responses: what is left today of the caller's own budget
    (after this request, or for a stream, after its reservation)."""
    charge = g._get_current_object().get("token_charge")
    remaining = charge.remaining() if charge is not None else None
    if remaining is not None:
        # Added, not set: nothing else writes this header, and setting one scans and compares
        # every header already there (sixteen `str.lower` calls on a chat reply).
        response.headers.add(BUDGET_HEADER, str(remaining))
    return response


def budgets_info() -> dict:
    """The budgets as `/api/info` shows them."""
    budgets: Budgets = current_app.extensions["token_budgets"]
    return {"enabled": budgets.configured, "perClientPerDay": budgets.per_client, "totalPerDay": budgets.total}
