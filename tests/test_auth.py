"""Client keys: REQUIRE_API_KEY + VALID_API_KEYS (or VALID_API_KEYS_FILE) on every chat call;
health, info and static stay open; the upstream key can come from KIMI_API_KEY_FILE."""
from __future__ import annotations

import pytest

from tests.conftest import UPSTREAM_KEY
from tests.helpers import CHAT_CALLS, call


@pytest.fixture
def keyed(make_app):
    """A test client for an app that requires one of two client keys."""
    return make_app(REQUIRE_API_KEY="true", VALID_API_KEYS="key-one,key-two").test_client()


@pytest.mark.parametrize("method,path,body", CHAT_CALLS)
def test_missing_key_is_401_json_with_bearer_challenge(keyed, method, path, body):
    response = call(keyed, method, path, body)
    assert response.status_code == 401
    assert response.get_json()["code"] == "missing_api_key" and response.get_json()["success"] is False
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("headers", [{"x-api-key": "key-three"}, {"Authorization": "Bearer key-three"},
                                     {"x-api-key": "key-on"}, {"Authorization": "Bearer key-one-and-more"}])
@pytest.mark.parametrize("method,path,body", CHAT_CALLS)
def test_wrong_key_is_401_invalid_api_key(keyed, method, path, body, headers):
    response = call(keyed, method, path, body, headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_api_key"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("headers", [{"x-api-key": "key-one"}, {"x-api-key": "key-two"},
                                     {"Authorization": "Bearer key-one"}, {"Authorization": "bearer key-two"}])
@pytest.mark.parametrize("method,path,body", CHAT_CALLS)
def test_valid_key_in_either_header_is_accepted(keyed, method, path, body, headers):
    response = call(keyed, method, path, body, headers)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_a_non_bearer_authorization_is_not_a_key(keyed):
    response = keyed.get("/api/chat/models", headers={"Authorization": "Basic key-one"})
    assert response.status_code == 401 and response.get_json()["code"] == "missing_api_key"


@pytest.mark.parametrize("path", ["/health", "/api/info"])
def test_health_and_info_stay_open(keyed, path):
    assert keyed.get(path).status_code == 200


def test_static_files_need_no_key(keyed):
    # No such file: the point is that the static route answers 404 itself, not 401.
    response = keyed.get("/static/no-such-file.js")
    assert response.status_code == 404 and response.get_json()["code"] == "not_found"


def test_preflight_needs_no_key(keyed):
    response = keyed.options("/api/chat/completion", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-api-key"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "http://localhost:5173")


def test_keys_are_not_required_by_default(client):
    assert client.post("/api/chat/completion", json={"message": "hi"}).status_code == 200


def test_client_keys_from_a_file(make_app, tmp_path):
    keys = tmp_path / "client_keys"
    keys.write_text("file-key-a\nfile-key-b\n")
    app = make_app(REQUIRE_API_KEY="true", VALID_API_KEYS_FILE=str(keys))
    client = app.test_client()
    assert client.get("/api/chat/models", headers={"x-api-key": "file-key-b"}).status_code == 200
    assert client.get("/api/chat/models", headers={"x-api-key": "key-one"}).status_code == 401


def test_upstream_key_from_a_file_reaches_moonshot(make_app, simulator, tmp_path):
    # The simulator accepts only UPSTREAM_KEY; a wrong key would come back as 502 upstream_auth_failed.
    secret = tmp_path / "kimi_api_key"
    secret.write_text(UPSTREAM_KEY + "\n")
    app = make_app(KIMI_API_KEY="", KIMI_API_KEY_FILE=str(secret))
    response = app.test_client().post("/api/chat/completion", json={"message": "hi"})
    assert response.status_code == 200, response.get_json()
    assert simulator.stats()["chat_requests"] >= 1
