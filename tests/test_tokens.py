"""Browser tokens (tokens.py, api/tokens.py, auth.py): minting with the admin key, using a token
wherever a client key goes, expiry on an injected clock, secret rotation, revocation, origin
binding, tampering, and the limits a token's subject and its own `rate_limit` get."""
from __future__ import annotations

import base64
import json
import logging
import time
import warnings
from datetime import datetime, timezone

import jwt
import pytest
from flask import g

from kimi_backend.auth import require_client_key
from kimi_backend.moonshot.models import DEFAULT_MODEL
from kimi_backend.config.parsers import ConfigError
from tests.helpers import CHAT_CALLS, LONG_WINDOW_MS, assert_error, call, free_port
from tests.token_support import ADMIN, NEW_SECRET, OTHER_SITE, SECRET, SITE, T0, Clock, claims_of, mint, using


@pytest.fixture
def app(token_app):
    return token_app()


# --- Minting -----------------------------------------------------------------------------

def test_mint_answers_a_signed_token_its_expiry_and_subject(client):
    data = mint(client, subject="user-123", origins=[SITE], ttl_s=600, token_budget=20000,
                rate_limit={"max_requests": 20, "window_ms": 60000})
    assert data["subject"] == "user-123"
    assert data["expires_at"] == datetime.fromtimestamp(T0 + 600, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert jwt.get_unverified_header(data["token"])["alg"] == "HS256"
    claims = jwt.decode(data["token"], SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["sub"] == "user-123" and claims["origins"] == [SITE]
    assert (claims["iat"], claims["exp"]) == (T0, T0 + 600)
    assert claims["token_budget"] == 20000 and claims["rate_limit"] == {"max_requests": 20, "window_ms": 60000}
    assert claims["jti"]


def test_mint_responses_are_not_cached(client):
    response = client.post("/api/tokens", json={}, headers={"x-admin-key": ADMIN})
    assert response.headers["Cache-Control"] == "no-store"


def test_an_empty_body_mints_with_the_defaults(token_app):
    client = token_app(TOKEN_MAX_TTL_S="900").test_client()
    response = client.post("/api/tokens", headers={"x-admin-key": ADMIN})
    assert response.status_code == 200, response.get_json()
    data = response.get_json()["data"]
    claims = claims_of(data["token"])
    assert data["subject"].startswith("token:") and claims["sub"] == data["subject"]
    assert claims["origins"] == [SITE, OTHER_SITE]  # ALLOWED_ORIGINS
    assert claims["exp"] - claims["iat"] == 900  # TOKEN_MAX_TTL_S
    assert "token_budget" not in claims and "rate_limit" not in claims


def test_ttl_is_capped_at_the_maximum(token_app):
    client = token_app(TOKEN_MAX_TTL_S="900").test_client()
    claims = claims_of(mint(client, ttl_s=86400)["token"])
    assert claims["exp"] - claims["iat"] == 900


def test_origins_default_to_any_while_developing_without_allowed_origins(token_app):
    client = token_app(ALLOWED_ORIGINS="").test_client()
    token = mint(client)["token"]
    assert claims_of(token)["origins"] == ["*"]
    assert client.get("/api/chat/models", headers=using(token, origin=None)).status_code == 200


def test_in_production_without_allowed_origins_a_token_needs_explicit_origins(token_app):
    client = token_app(NODE_ENV="production", ALLOWED_ORIGINS="").test_client()
    body = mint(client, expect=400)
    assert body["code"] == "invalid_request" and "ALLOWED_ORIGINS" in body["error"]
    assert claims_of(mint(client, origins=["*"])["token"])["origins"] == ["*"]


@pytest.mark.parametrize("body,field", [
    ({"ttl_s": 0}, "ttl_s"),
    ({"ttl_s": "600"}, "ttl_s"),
    ({"subject": "has space"}, "subject"),
    ({"subject": "anon:mine"}, "subject"),
    ({"subject": "x" * 129}, "subject"),
    ({"origins": []}, "origins"),
    ({"origins": ["https://app.example/"]}, "origins"),
    ({"origins": ["https://elsewhere.example"]}, "origins"),
    ({"token_budget": 0}, "token_budget"),
    ({"rate_limit": {"max_requests": 0, "window_ms": 1000}}, "rate_limit.max_requests"),
    ({"rate_limit": {"max_requests": 5}}, "rate_limit.window_ms"),
    ({"ttl": 600}, "ttl"),
])
def test_a_bad_mint_request_is_400_naming_the_field(client, body, field):
    response = mint(client, expect=400, **body)
    assert response["code"] == "invalid_request"
    assert f"'{field}'" in response["error"]


def test_mint_is_an_admin_route(client, token_app):
    assert_error(client.post("/api/tokens", json={}), 401, "missing_admin_key")
    assert_error(client.post("/api/tokens", json={}, headers={"x-admin-key": "wrong"}), 401, "invalid_admin_key")
    assert_error(client.delete("/api/tokens/user-1", headers={"x-admin-key": "wrong"}), 401, "invalid_admin_key")
    no_admin = token_app(ADMIN_API_KEY="").test_client()
    assert_error(no_admin.post("/api/tokens", json={}, headers={"x-admin-key": ADMIN}), 404, "not_found")
    assert_error(no_admin.delete("/api/tokens/user-1", headers={"x-admin-key": ADMIN}), 404, "not_found")


def test_without_token_secret_minting_says_tokens_are_disabled(token_app):
    client = token_app(TOKEN_SECRET="").test_client()
    response = client.post("/api/tokens", json={}, headers={"x-admin-key": ADMIN})
    assert_error(response, 503, "tokens_disabled")
    assert "TOKEN_SECRET" in response.get_json()["error"]
    assert_error(client.delete("/api/tokens/user-1", headers={"x-admin-key": ADMIN}), 503, "tokens_disabled")


def test_browsers_may_not_send_the_admin_key(client):
    response = client.options("/api/tokens", headers={"Origin": SITE, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "content-type, x-admin-key"})
    allowed = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert "x-admin-key" not in allowed


# --- Using a token -----------------------------------------------------------------------

@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
@pytest.mark.parametrize("method,path,body", CHAT_CALLS)
def test_a_token_goes_wherever_a_client_key_goes(token_app, method, path, body, style):
    client = token_app(REQUIRE_API_KEY="true", VALID_API_KEYS="static-key").test_client()
    token = mint(client, subject="user-1")["token"]
    response = call(client, method, path, body, using(token, style=style))
    assert response.status_code == 200, response.get_data(as_text=True)
    if path.endswith("/stream"):
        assert response.get_data(as_text=True).rstrip().endswith("data: [DONE]")
    # The static keys keep working beside tokens.
    assert call(client, method, path, body, {"x-api-key": "static-key"}).status_code == 200


OPENAI_CALLS = [
    ("post", "/v1/chat/completions", {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("post", "/v1/chat/completions", {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("get", "/v1/models", None),
]


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
@pytest.mark.parametrize("method,path,body", OPENAI_CALLS)
def test_a_token_is_a_key_on_the_openai_surface_too(token_app, method, path, body, style):
    app = token_app(REQUIRE_API_KEY="true", VALID_API_KEYS="static-key")
    client = app.test_client()
    token = mint(client, subject="user-1", origins=[SITE], ttl_s=60)["token"]
    response = call(client, method, path, body, using(token, style=style))
    assert response.status_code == 200, response.get_data(as_text=True)
    if body and body.get("stream"):
        assert response.get_data(as_text=True).rstrip().endswith("data: [DONE]")
    # Its refusals keep their codes, in OpenAI's error shape.
    refusals = [(using(token, OTHER_SITE, style), 403, "origin_not_allowed"),
                (using(token[:-2] + ("AA" if not token.endswith("AA") else "BB"), style=style), 401, "invalid_api_key")]
    for headers, status, code in refusals:
        refused = call(client, method, path, body, headers)
        assert (refused.status_code, refused.get_json()["error"]["code"]) == (status, code)
    app.extensions["tokens"].clock.now = T0 + 60
    expired = call(client, method, path, body, using(token, style=style))
    assert (expired.status_code, expired.get_json()["error"]["code"]) == (401, "token_expired")


def test_a_presented_token_is_verified_even_when_keys_are_not_required(client):
    token = mint(client, subject="user-1")["token"]
    assert client.post("/api/chat/completion", json={"message": "hi"}, headers=using(token)).status_code == 200
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}, headers=using(tampered)), 401, "invalid_api_key")
    assert_error(client.post("/api/chat/completion", json={"message": "hi"}, headers=using(token, OTHER_SITE + ":8443")),
                 403, "origin_not_allowed")


def test_a_token_minted_elsewhere_is_not_a_key_where_tokens_are_off(token_app):
    token = mint(token_app().test_client())["token"]
    client = token_app(TOKEN_SECRET="", REQUIRE_API_KEY="true", VALID_API_KEYS="static-key").test_client()
    assert_error(client.get("/api/chat/models", headers=using(token)), 401, "invalid_api_key")


# --- Expiry, rotation, tampering ---------------------------------------------------------

def test_a_token_expires_on_the_token_clock(app):
    client = app.test_client()
    clock = app.extensions["tokens"].clock
    token = mint(client, ttl_s=60)["token"]
    clock.now = T0 + 59
    assert client.get("/api/chat/models", headers=using(token)).status_code == 200
    clock.now = T0 + 60
    response = client.get("/api/chat/models", headers=using(token))
    assert_error(response, 401, "token_expired")
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_expiry_follows_the_injected_clock_not_the_wall_clock(app):
    # Minted and checked in 2001 by the service's clock: long expired by the wall clock, valid by ours.
    app.extensions["tokens"].clock = Clock(1_000_000_000)
    client = app.test_client()
    token = mint(client, ttl_s=60)["token"]
    assert claims_of(token)["exp"] < time.time()
    assert client.get("/api/chat/models", headers=using(token)).status_code == 200


def test_rotation_the_first_secret_signs_and_every_secret_verifies(token_app):
    old_token = mint(token_app().test_client(), subject="user-1")["token"]
    rotating = token_app(TOKEN_SECRET=f"{NEW_SECRET},{SECRET}").test_client()
    assert rotating.get("/api/chat/models", headers=using(old_token)).status_code == 200
    new_token = mint(rotating, subject="user-1")["token"]
    assert jwt.decode(new_token, NEW_SECRET, algorithms=["HS256"], options={"verify_exp": False})["sub"] == "user-1"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(new_token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    # Once the old secret is dropped, its tokens stop working; the new ones do not.
    rotated = token_app(TOKEN_SECRET=NEW_SECRET).test_client()
    assert_error(rotated.get("/api/chat/models", headers=using(old_token)), 401, "invalid_api_key")
    assert rotated.get("/api/chat/models", headers=using(new_token)).status_code == 200


def _segment(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_tokens(genuine: str) -> dict[str, str]:
    """Tokens a thief might try, each derived from a genuine one."""
    header, payload, signature = genuine.split(".")
    claims = claims_of(genuine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)  # HS512 wants a longer key: fine, it is a forgery
        hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    return {
        "payload changed, signature kept": ".".join([header, _segment({**claims, "sub": "someone-else"}), signature]),
        "more time, signature kept": ".".join([header, _segment({**claims, "exp": claims["exp"] + 86400}), signature]),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "alg none, no signature": ".".join([_segment({"alg": "none", "typ": "JWT"}), payload, ""]),
        "HS512 with the real secret": hs512,
        "signed with another secret": jwt.encode(claims, NEW_SECRET, algorithm="HS256"),
        "no revision claim": jwt.encode({k: v for k, v in claims.items() if k != "rev"}, SECRET, algorithm="HS256"),
        "another issuer": jwt.encode({**claims, "iss": "someone"}, SECRET, algorithm="HS256"),
        "origins not a list of text": jwt.encode({**claims, "origins": [1]}, SECRET, algorithm="HS256"),
        "garbage in three parts": "not.a.token",
    }


def test_a_tampered_or_forged_token_is_401_invalid_api_key(client):
    genuine = mint(client, subject="user-1", origins=[SITE])["token"]
    assert client.get("/api/chat/models", headers=using(genuine)).status_code == 200
    for name, forged in forged_tokens(genuine).items():
        response = client.get("/api/chat/models", headers=using(forged))
        assert response.status_code == 401 and response.get_json()["code"] == "invalid_api_key", name


# --- Origins -----------------------------------------------------------------------------

@pytest.mark.parametrize("origin", [OTHER_SITE, "null", "https://app.example.evil.example", "http://app.example", None])
def test_a_bound_token_refuses_other_origins_and_requests_without_one(client, origin):
    token = mint(client, origins=[SITE])["token"]
    response = client.post("/api/chat/completion", json={"message": "hi"}, headers=using(token, origin))
    assert_error(response, 403, "origin_not_allowed")


def test_a_token_works_from_each_of_its_origins(client):
    token = mint(client, origins=[SITE, OTHER_SITE])["token"]
    for origin in (SITE, OTHER_SITE):
        response = client.get("/api/chat/models", headers=using(token, origin))
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin


def test_a_same_origin_get_without_origin_header_counts_as_the_services_own_origin(token_app):
    # Browsers send no Origin on a same-origin GET; Sec-Fetch-Site says where it came from.
    client = token_app(ALLOWED_ORIGINS="http://localhost").test_client()
    token = mint(client, origins=["http://localhost"])["token"]
    same_origin = {"Authorization": f"Bearer {token}", "Sec-Fetch-Site": "same-origin"}
    assert client.get("/api/chat/models", headers=same_origin).status_code == 200
    cross_site = {"Authorization": f"Bearer {token}", "Sec-Fetch-Site": "cross-site"}
    assert_error(client.get("/api/chat/models", headers=cross_site), 403, "origin_not_allowed")


def test_an_unbound_token_needs_no_origin(client):
    token = mint(client, origins=["*"])["token"]
    assert client.get("/api/chat/models", headers=using(token, origin=None)).status_code == 200
    assert client.get("/api/chat/models", headers=using(token, origin="https://anywhere.example")).status_code == 200


# --- Revocation --------------------------------------------------------------------------

def test_revoking_a_subject_refuses_its_tokens_minted_before(client):
    first, second = mint(client, subject="user-1")["token"], mint(client, subject="user-1")["token"]
    bystander = mint(client, subject="user-2")["token"]
    response = client.delete("/api/tokens/user-1", headers={"x-admin-key": ADMIN})
    assert response.status_code == 200
    assert response.get_json()["data"] == {"subject": "user-1", "revoked_at": "2023-11-14T22:13:20Z"}
    for token in (first, second):
        revoked = client.get("/api/chat/models", headers=using(token))
        assert_error(revoked, 401, "token_revoked")
        assert revoked.headers["WWW-Authenticate"].startswith("Bearer ")
    assert client.get("/api/chat/models", headers=using(bystander)).status_code == 200
    # Tokens minted after the revocation work; a second revocation refuses them too.
    fresh = mint(client, subject="user-1")["token"]
    assert client.get("/api/chat/models", headers=using(fresh)).status_code == 200
    assert client.delete("/api/tokens/user-1", headers={"x-admin-key": ADMIN}).status_code == 200
    assert_error(client.get("/api/chat/models", headers=using(fresh)), 401, "token_revoked")


def test_revoking_a_malformed_subject_is_400(client):
    assert_error(client.delete("/api/tokens/has%20space", headers={"x-admin-key": ADMIN}), 400, "invalid_request")


def unreachable_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_with_the_storage_down_and_fail_open_tokens_keep_working_but_revoking_fails(token_app):
    client = token_app(RATE_LIMIT_STORAGE_URI=unreachable_redis()).test_client()
    token = mint(client, subject="user-1")["token"]
    assert client.get("/api/chat/models", headers=using(token)).status_code == 200
    # A revocation that cannot be stored where every worker reads it fails loudly.
    assert_error(client.delete("/api/tokens/user-1", headers={"x-admin-key": ADMIN}), 503, "rate_limit_unavailable")


def test_with_the_storage_down_and_fail_closed_minting_is_refused(token_app):
    client = token_app(RATE_LIMIT_STORAGE_URI=unreachable_redis(), RATE_LIMIT_FAIL_OPEN="false").test_client()
    assert_error(client.post("/api/tokens", json={"subject": "user-1"}, headers={"x-admin-key": ADMIN}),
                 503, "rate_limit_unavailable")


# --- Limits ------------------------------------------------------------------------------

def limited(token_app, maximum: int, **overrides):
    return token_app(RATE_LIMIT_MAX_REQUESTS=str(maximum), RATE_LIMIT_WINDOW_MS=LONG_WINDOW_MS, **overrides).test_client()


def from_address(address: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": address}}


def test_the_service_limit_counts_per_subject_across_tokens_and_machines(token_app):
    client = limited(token_app, 3)
    one, two = mint(client, subject="user-1")["token"], mint(client, subject="user-1")["token"]
    other = mint(client, subject="user-2")["token"]
    statuses = [client.get("/api/chat/models", headers=using(token), **from_address(address)).status_code
                for token, address in ((one, "198.51.100.1"), (two, "198.51.100.2"), (one, "198.51.100.3"),
                                       (two, "198.51.100.4"))]
    assert statuses == [200, 200, 200, 429]  # one subject: fanning out over machines gains nothing
    assert client.get("/api/chat/models", headers=using(other)).status_code == 200
    assert client.get("/api/info", **from_address("198.51.100.1")).status_code == 200  # the addresses are untouched


def test_a_tokens_own_rate_limit_applies_on_top_of_the_service_limit(token_app):
    client = limited(token_app, 100)
    token = mint(client, subject="user-1", rate_limit={"max_requests": 2, "window_ms": 60000})["token"]
    remaining = [client.get("/api/chat/models", headers=using(token)).headers["X-RateLimit-Remaining"] for _ in range(2)]
    assert remaining == ["1", "0"]
    response = client.get("/api/chat/models", headers=using(token), **from_address("203.0.113.9"))
    assert_error(response, 429, "rate_limited")
    assert response.headers["X-RateLimit-Limit"] == "2"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # The limit is the subject's: a fresh token for the subject (a refresh) does not reset it;
    # other subjects are not touched by it.
    sibling = mint(client, subject="user-1", rate_limit={"max_requests": 2, "window_ms": 60000})["token"]
    assert client.get("/api/chat/models", headers=using(sibling)).status_code == 429
    stranger = mint(client, subject="user-2")["token"]
    assert client.get("/api/chat/models", headers=using(stranger)).headers["X-RateLimit-Limit"] == "100"


def test_a_service_limit_stricter_than_the_tokens_still_holds(token_app):
    client = limited(token_app, 2)
    token = mint(client, subject="user-1", rate_limit={"max_requests": 50, "window_ms": 60000})["token"]
    assert [client.get("/api/chat/models", headers=using(token)).status_code for _ in range(3)] == [200, 200, 429]


def test_refused_tokens_spend_the_callers_address_not_the_subject(token_app):
    client = limited(token_app, 3)
    clock = client.application.extensions["tokens"].clock
    token = mint(client, subject="user-1", origins=[SITE], ttl_s=60)["token"]
    # From a wrong origin and after expiry, the address pays: the subject's budget is left whole.
    assert client.get("/api/chat/models", headers=using(token, OTHER_SITE)).status_code == 403
    assert client.get("/api/chat/models", headers=using(token, OTHER_SITE)).status_code == 403
    assert client.get("/api/info").headers["X-RateLimit-Remaining"] == "0"
    assert client.get("/api/chat/models", headers=using(token)).headers["X-RateLimit-Remaining"] == "2"
    clock.now = T0 + 60
    assert client.get("/api/chat/models", headers=using(token)).status_code == 429  # the address's budget is spent


# --- Budgets -----------------------------------------------------------------------------

def spend(client, token: str, origin: str | None = SITE):
    """A completion on `token` that reserves a little (thinking off: its cost is its text's)."""
    return client.post("/api/chat/completion", json={"message": "hi", "thinking": False, "max_tokens": 20},
                       headers=using(token, origin))


def until_refused(call, most: int = 10):
    """The first answer of `call()` that is not a 200, within `most` calls."""
    for _ in range(most):
        response = call()
        if response.status_code != 200:
            return response
    raise AssertionError(f"still answered 200 after {most} calls")


def test_a_tokens_own_budget_is_its_subjects_across_its_tokens(token_app):
    client = token_app().test_client()
    one, two = (mint(client, subject="user-1", token_budget=60)["token"] for _ in range(2))
    stranger = mint(client, subject="user-2", token_budget=60)["token"]
    spent = 0
    for token in (one, two):  # a refresh (a new token for the subject) does not reset the budget
        response = spend(client, token)
        assert response.status_code == 200, response.get_json()
        spent += response.get_json()["data"]["usage"]["total_tokens"]
        assert response.headers["X-Budget-Remaining"] == str(60 - spent)
    response = until_refused(lambda: spend(client, one))
    assert_error(response, 429, "token_budget_exceeded")
    assert response.get_json()["error"].startswith("This token's daily budget is used up")
    assert_error(spend(client, two), 429, "token_budget_exceeded")
    fresh = spend(client, stranger)  # another subject's budget is untouched
    assert fresh.headers["X-Budget-Remaining"] == str(60 - fresh.get_json()["data"]["usage"]["total_tokens"])


def test_the_daily_client_budget_counts_per_subject(token_app):
    client = token_app(TOKEN_BUDGET_PER_DAY="60").test_client()
    one, two = (mint(client, subject="user-1")["token"] for _ in range(2))
    assert spend(client, one).status_code == 200
    response = until_refused(lambda: spend(client, two, OTHER_SITE))
    assert_error(response, 429, "token_budget_exceeded")
    assert response.get_json()["error"].startswith("Your daily token budget is used up")
    assert_error(spend(client, one), 429, "token_budget_exceeded")  # the subject's, from any of its tokens
    assert spend(client, mint(client, subject="user-2")["token"]).status_code == 200


# --- What other parts read, and what never leaks -----------------------------------------

def test_the_tokens_budget_is_on_g_for_the_budget_ledger(app):
    @app.post("/api/test-budget-probe")
    def budget_probe():
        require_client_key()
        return {"success": True, "token_budget": g.get("token_budget"), "token_subject": g.token.subject}

    client = app.test_client()
    with_budget = mint(client, subject="user-1", token_budget=1234)["token"]
    without = mint(client, subject="user-2")["token"]
    assert client.post("/api/test-budget-probe", headers=using(with_budget)).get_json() == {
        "success": True, "token_budget": 1234, "token_subject": "user-1"}
    assert client.post("/api/test-budget-probe", headers=using(without)).get_json()["token_budget"] is None


def test_the_access_log_names_the_subject_and_no_log_line_holds_a_token(app, caplog):
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        token = mint(client, subject="user-1", ttl_s=60)["token"]
        client.post("/api/chat/completion", json={"message": "hi"}, headers=using(token))
        client.get("/api/chat/models", headers=using(token, OTHER_SITE))
        for forged in forged_tokens(token).values():
            client.get("/api/chat/models", headers=using(forged))
        app.extensions["tokens"].clock.now = T0 + 60
        client.get("/api/chat/models", headers=using(token))
    clients = [record.fields["client"] for record in caplog.records if record.name == "kimi_backend.access"]
    assert "sub:user-1" in clients
    signature = token.rsplit(".", 1)[1]
    for record in caplog.records:
        text = record.getMessage() + json.dumps(getattr(record, "fields", {}), default=str)
        assert signature not in text and token not in text and ADMIN not in text


def test_api_info_says_whether_tokens_and_anonymous_sessions_are_on(make_app, token_app):
    assert make_app().test_client().get("/api/info").get_json()["data"]["auth"] == {
        "required": False, "headers": ["x-api-key", "Authorization: Bearer <key>"],
        "tokens": False, "anonymousSessions": False}
    auth = token_app(ANONYMOUS_TOKENS="true").test_client().get("/api/info").get_json()["data"]["auth"]
    assert auth["tokens"] is True and auth["anonymousSessions"] is True


def test_the_token_routes_are_in_the_api_document(client):
    document = client.get("/api/openapi.json").get_json()
    mint_operation = document["paths"]["/api/tokens"]["post"]
    assert mint_operation["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/TokenRequest"
    assert mint_operation["requestBody"]["required"] is False  # an empty body mints with the defaults
    assert mint_operation["security"] == document["paths"]["/api/tokens/{subject}"]["delete"]["security"] \
        == [{"AdminKey": []}]
    assert "security" not in document["paths"]["/api/session"]["post"]
    assert "(needs the admin key, x-admin-key)" in client.get("/api/docs").get_data(as_text=True)
    assert set(document["components"]["schemas"]["TokenRequest"]["properties"]) == {
        "subject", "origins", "ttl_s", "token_budget", "rate_limit"}
    assert "delete" in document["paths"]["/api/tokens/{subject}"]
    assert "post" in document["paths"]["/api/session"]
    listed = {(e["method"], e["path"]) for e in client.get("/api/info").get_json()["data"]["endpoints"]}
    assert {("POST", "/api/tokens"), ("DELETE", "/api/tokens/{subject}"), ("POST", "/api/session")} <= listed


# --- Settings ----------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,variable", [
    ({"TOKEN_SECRET": "too-short"}, "TOKEN_SECRET"),
    ({"TOKEN_SECRET": f"{SECRET},short"}, "TOKEN_SECRET"),
    ({"TOKEN_MAX_TTL_S": "an hour"}, "TOKEN_MAX_TTL_S"),
    ({"TOKEN_MAX_TTL_S": "0"}, "TOKEN_MAX_TTL_S"),
    ({"TOKEN_SECRET": "", "ANONYMOUS_TOKENS": "true"}, "ANONYMOUS_TOKENS"),
    ({"ANONYMOUS_TOKENS": "maybe"}, "ANONYMOUS_TOKENS"),
    ({"ANON_TOKEN_TTL_S": "7200"}, "ANON_TOKEN_TTL_S"),
    ({"ANON_TOKEN_BUDGET": "-1"}, "ANON_TOKEN_BUDGET"),
    ({"ANON_SESSIONS_PER_HOUR": "0"}, "ANON_SESSIONS_PER_HOUR"),
])
def test_bad_token_settings_stop_startup_naming_the_variable(token_app, overrides, variable):
    with pytest.raises(ConfigError, match=f"^{variable}") as error:
        token_app(**overrides)
    assert SECRET not in str(error.value) and "too-short" not in str(error.value)  # secrets are never echoed
