"""Anonymous sessions (`POST /api/session`, ANONYMOUS_TOKENS): a token for a page on an allowed
origin, bound to that origin, with the anonymous lifetime and budget, capped per address, and
counted against the caller's address as well as its own subject."""
from __future__ import annotations

import jwt
import pytest

from tests.helpers import assert_error
from tests.token_support import SITE, using

STRANGER = "https://stranger.example"


@pytest.fixture
def anonymous(token_app):
    """Builds an app with anonymous sessions on: `anonymous(**overrides)`."""
    def build(**overrides):
        return token_app(**{"ANONYMOUS_TOKENS": "true", "RATE_LIMIT_WINDOW_MS": "3600000", **overrides})
    return build


def start(client, origin: str | None = SITE, address: str = "127.0.0.1"):
    headers = {"Origin": origin} if origin else {}
    return client.post("/api/session", headers=headers, environ_base={"REMOTE_ADDR": address})


def test_off_by_default_the_route_does_not_exist(token_app):
    assert_error(start(token_app().test_client()), 404, "not_found")


def test_a_page_on_an_allowed_origin_gets_a_token_bound_to_it(anonymous):
    client = anonymous(ANON_TOKEN_TTL_S="300", ANON_TOKEN_BUDGET="5000").test_client()
    response = start(client)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Access-Control-Allow-Origin"] == SITE
    assert response.headers["Cache-Control"] == "no-store"
    data = response.get_json()["data"]
    assert data["subject"].startswith("anon:") and len(data["subject"]) > len("anon:") + 10
    claims = jwt.decode(data["token"], options={"verify_signature": False})
    assert claims["sub"] == data["subject"] and claims["origins"] == [SITE]
    assert (claims["exp"] - claims["iat"], claims["token_budget"]) == (300, 5000)
    assert data["expires_at"].endswith("Z")
    assert client.post("/api/chat/completion", json={"message": "hi"}, headers=using(data["token"])).status_code == 200
    # Bound to the page that asked, not to every allowed origin.
    assert_error(client.get("/api/chat/models", headers=using(data["token"], "https://other.example")),
                 403, "origin_not_allowed")


def test_every_session_is_a_new_subject(anonymous):
    client = anonymous().test_client()
    subjects = {start(client).get_json()["data"]["subject"] for _ in range(3)}
    assert len(subjects) == 3


@pytest.mark.parametrize("origin", [STRANGER, "null", None])
def test_other_origins_and_requests_without_one_are_refused(anonymous, origin):
    response = start(anonymous().test_client(), origin)
    assert_error(response, 403, "origin_not_allowed")
    assert "ALLOWED_ORIGINS" in response.get_json()["error"]


def test_the_services_own_pages_may_start_one(anonymous):
    # The test page is served by the service itself: its origin is this host's.
    client = anonymous().test_client()
    token = start(client, "http://localhost").get_json()["data"]["token"]
    same_origin_get = {"Authorization": f"Bearer {token}", "Sec-Fetch-Site": "same-origin"}
    assert client.get("/api/chat/models", headers=same_origin_get).status_code == 200


def test_any_origin_while_developing_without_allowed_origins(anonymous):
    client = anonymous(ALLOWED_ORIGINS="").test_client()
    token = start(client, STRANGER).get_json()["data"]["token"]
    assert jwt.decode(token, options={"verify_signature": False})["origins"] == [STRANGER]


def test_sessions_are_capped_per_address_per_hour(anonymous):
    client = anonymous(ANON_SESSIONS_PER_HOUR="2").test_client()
    assert [start(client).status_code for _ in range(2)] == [200, 200]
    refused = start(client)
    assert_error(refused, 429, "rate_limited")
    assert "2 an hour" in refused.get_json()["error"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["X-RateLimit-Limit"] == "2"
    assert start(client, address="203.0.113.50").status_code == 200  # another address has its own cap


def test_refused_origins_do_not_spend_the_cap(anonymous):
    client = anonymous(ANON_SESSIONS_PER_HOUR="1").test_client()
    for _ in range(3):
        assert start(client, STRANGER).status_code == 403
    assert start(client).status_code == 200


def test_anonymous_tokens_also_spend_the_callers_address_budget(anonymous):
    # Anyone can start a fresh session, so a fresh subject must not mean a fresh budget.
    client = anonymous(RATE_LIMIT_MAX_REQUESTS="4", ANON_SESSIONS_PER_HOUR="10").test_client()
    first, second = (start(client).get_json()["data"]["token"] for _ in range(2))  # the address: 2 of 4
    assert client.get("/api/chat/models", headers=using(first)).status_code == 200  # 3 of 4
    assert client.get("/api/chat/models", headers=using(second)).status_code == 200  # 4 of 4
    assert_error(client.get("/api/chat/models", headers=using(second)), 429, "rate_limited")
    # From another address a session's own subject budget still has room.
    elsewhere = client.get("/api/chat/models", headers=using(second), environ_base={"REMOTE_ADDR": "203.0.113.60"})
    assert elsewhere.status_code == 200


def test_the_preflight_of_a_json_session_request_is_allowed(anonymous):
    response = anonymous().test_client().options("/api/session", headers={
        "Origin": SITE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SITE


def spend(client, token: str, address: str = "127.0.0.1"):
    """A completion on `token` from `address` (thinking off: its cost is its text's)."""
    return client.post("/api/chat/completion", json={"message": "hi", "thinking": False, "max_tokens": 20},
                       headers=using(token), environ_base={"REMOTE_ADDR": address})


def test_an_anonymous_token_has_the_anonymous_budget(anonymous):
    client = anonymous(ANON_TOKEN_BUDGET="60").test_client()
    token = start(client).get_json()["data"]["token"]
    first = spend(client, token)
    assert first.headers["X-Budget-Remaining"] == str(60 - first.get_json()["data"]["usage"]["total_tokens"])
    refused = next(response for response in (spend(client, token) for _ in range(10)) if response.status_code != 200)
    assert_error(refused, 429, "token_budget_exceeded")
    assert refused.get_json()["error"].startswith("This token's daily budget is used up")


def test_anonymous_tokens_also_spend_the_callers_address_daily_budget(anonymous):
    # A fresh session is a fresh subject: without the address's budget, sessions would multiply it.
    client = anonymous(TOKEN_BUDGET_PER_DAY="60", ANON_TOKEN_BUDGET="1000").test_client()
    tokens = [start(client).get_json()["data"]["token"] for _ in range(4)]
    statuses = [spend(client, token).status_code for token in tokens]
    assert statuses[0] == 200 and statuses[-1] == 429
    refused = spend(client, tokens[0])
    assert_error(refused, 429, "token_budget_exceeded")
    assert refused.get_json()["error"].startswith("Your daily token budget is used up")
    # The address's keyless requests share that budget; another address's session does not.
    assert_error(client.post("/api/chat/completion", json={"message": "hi", "max_tokens": 20}), 429, "token_budget_exceeded")
    elsewhere = start(client, address="203.0.113.70").get_json()["data"]["token"]
    assert spend(client, elsewhere, address="203.0.113.70").status_code == 200
