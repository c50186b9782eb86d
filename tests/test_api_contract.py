"""schemathesis against our own OpenAPI document, under the real gunicorn in front of the
simulator: generated requests for every operation, a bounded number each, and every check
schemathesis has (no 5xx, responses and their headers as documented, invalid data refused).

"Valid data accepted" is checked in its precise form: a request the document allows is never
refused by our own validation. The upstream may still refuse it (a `max_tokens` past the
model's window, a tool message without its call), and says so with its own codes, as documented."""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from kimi_backend import create_app
from kimi_backend.api.openapi import build_document
from tests.conftest import UPSTREAM_KEY
from tests.servers import Service
from tests.token_support import ADMIN, SECRET

# Cases per operation: enough to meet every field's edge values, bounded so `make test` stays quick.
CASES_PER_OPERATION = 25
# Admin routes and browser tokens on, so every route exists (generated requests do not know the
# admin key: those operations are checked for refusing them as documented).
FEATURES = {"ADMIN_API_KEY": ADMIN, "TOKEN_SECRET": SECRET}
# The document, built the way the service builds it; the test checks the served one is the same.
DOCUMENT = build_document(create_app({"KIMI_API_KEY": "sk-document-only", "KIMI_BASE_URL": "http://127.0.0.1:9/v1",
                                      **FEATURES}))
# Invalid data may also be refused for its size before any route sees it: gunicorn answers a
# request line or headers past its limits with 414/431 (in our JSON error shape), and intake a
# body past MAX_BODY_BYTES with 413. Those are refusals too, beside schemathesis's own list.
_REFUSALS = SchemathesisConfig().projects.default.checks.negative_data_rejection.expected_statuses
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*_REFUSALS, "413", "414", "431"]}}}))


@pytest.fixture(scope="module")
def contract_service(simulator_server):
    svc = Service(KIMI_API_KEY=UPSTREAM_KEY, KIMI_BASE_URL=simulator_server.base_url, RATE_LIMIT_MAX_REQUESTS="1000000",
                  UPSTREAM_MAX_RETRIES="0", MAX_CONNECTIONS_PER_IP="1000", **FEATURES)
    assert requests.get(svc.url + "/api/openapi.json", timeout=10).json() == DOCUMENT
    yield svc
    log = svc.log()
    svc.stop()
    assert UPSTREAM_KEY not in log


# Our validation's codes: a schema-valid request refused with one of these means the document
# and the validator disagree.
VALIDATION_CODES = {"invalid_json", "invalid_body", "invalid_request"}


@schemathesis.check
def document_and_validator_agree(ctx, response, case) -> None:
    """A request generated as valid for the document is not refused by our validation."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return
    body = response.json()
    code = body["error"]["code"] if isinstance(body.get("error"), dict) else body.get("code")
    if code in VALIDATION_CODES:
        raise AssertionError(f"the document allows this request but our validation refused it: {body}")


@schema.parametrize()
@settings(max_examples=CASES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_every_operation_keeps_its_contract(case, contract_service, simulator):
    case.call_and_validate(base_url=contract_service.url, timeout=30,
                           excluded_checks=[schemathesis.checks.positive_data_acceptance],
                           additional_checks=[document_and_validator_agree])
