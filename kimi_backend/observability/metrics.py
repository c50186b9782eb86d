"""The service's Prometheus metrics: declared here, bumped here (the request's record calls
the functions below; the usage package bumps its own counters) and exposed here, correct
under several gunicorn workers (prometheus-client's multiprocess mode, switched on by `PROMETHEUS_MULTIPROC_DIR`,
which gunicorn.conf.py sets for every worker before this module is imported)."""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY

from ..moonshot.models import MODELS

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Streams last minutes, so the buckets reach well past the usual web-request range.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("kimi_http_requests_total", "HTTP requests answered, by route and status.",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("kimi_http_request_duration_seconds",
                            "Time from request to the end of the response (a stream's end for streams).",
                            ["route"], buckets=LATENCY_BUCKETS)
UPSTREAM_SECONDS = Histogram("kimi_upstream_request_duration_seconds",
                             "Moonshot call latency: to the whole reply, or to the stream's headers.",
                             ["endpoint"], buckets=LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("kimi_upstream_errors_total",
                          "Failed Moonshot calls, by Moonshot's error type (or our code when it gave none).",
                          ["endpoint", "type"])
TOKENS = Counter("kimi_tokens_total", "Tokens used, by model and direction (in = prompt, out = completion).",
                 ["model", "direction"])
ACTIVE_STREAMS = Gauge("kimi_active_streams", "Streams being relayed right now.", multiprocess_mode="livesum")
RATE_LIMITED = Counter("kimi_rate_limit_rejections_total", "Requests refused by our own rate limit.", ["route"])
BUDGET_REFUSALS = Counter("kimi_token_budget_rejections_total", "Chat requests refused by a token budget, by budget.",
                          ["budget"])
BUDGET_SETTLE_FAILURES = Counter("kimi_token_budget_settle_failures_total",
                                 "Requests whose budget could not be settled (the limiter's storage failed).")
LEDGER_ROWS = Counter("kimi_usage_ledger_rows_total",
                      "Usage ledger rows by fate: written, or lost because the queue was full or the database failed.",
                      ["result"])
LEDGER_WRITE_ERRORS = Counter("kimi_usage_ledger_write_errors_total", "Failed attempts to write a batch to the usage database.")


# Every label takes values from a bounded set, so no caller or upstream can grow /metrics
# without bound (a random HTTP method per request once made thousands of series).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
_model_labels: set[str] = {facts.id for facts in MODELS}


_children: dict[tuple, object] = {}


def child(metric, *labels: str):
    """`metric.labels(*labels)`, looked up once per label set: prometheus-client checks the
    labels and takes a lock on every `labels()` call. Every label set is bounded (see above),
    and so is this cache."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def label_method(method: str) -> str:
    """The method, or "other" for anything but the standard ones."""
    return method if method in HTTP_METHODS else OTHER


def label_models(model_ids) -> None:
    """Adds configured model ids (DEFAULT_MODEL, ALLOWED_MODELS, alias targets) to those that
    get their own `model` label; the model table's ids always do."""
    _model_labels.update(model_ids)


def label_model(model: str | None) -> str:
    """The model, when the table or the configuration names it; otherwise "other" (an
    upstream can answer with any id it likes)."""
    return model if model in _model_labels else OTHER


def request_answered(method: str, route: str, status: int, seconds: float, outcome: str | None) -> None:
    """Counts one answered request: its status, its duration and a rate-limit refusal."""
    child(REQUESTS, label_method(method), route, str(status)).inc()
    child(REQUEST_SECONDS, route).observe(seconds)
    if outcome == "rate_limited":
        child(RATE_LIMITED, route).inc()


def upstream_called(endpoint: str, seconds: float) -> None:
    """Times one upstream call (to the whole reply, or to a stream's headers)."""
    child(UPSTREAM_SECONDS, endpoint).observe(seconds)


def upstream_failed(endpoint: str, error_type: str) -> None:
    """Counts a failed upstream call by Moonshot's error type, or our code."""
    child(UPSTREAM_ERRORS, endpoint, error_type).inc()


def tokens_used(model: str | None, tokens_in, tokens_out) -> None:
    """Counts a reply's tokens; a count that is not a whole number is not counted."""
    if isinstance(tokens_in, int):
        child(TOKENS, label_model(model), "in").inc(tokens_in)
    if isinstance(tokens_out, int):
        child(TOKENS, label_model(model), "out").inc(tokens_out)


def stream_opened() -> None:
    """One more stream being relayed."""
    ACTIVE_STREAMS.inc()


def stream_closed() -> None:
    """One stream fewer being relayed."""
    ACTIVE_STREAMS.dec()


def exposition() -> bytes:
    """The current metrics in Prometheus text format, summed over every worker in
    multiprocess mode."""
    # prometheus-client picked its value store from this variable when it was imported;
    # reading the same variable keeps the exposition consistent with that choice.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
