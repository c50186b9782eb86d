"""The SDK's browser-token renewal end to end: the SDK in headless Chromium, the service with
tokens on (served in this process, so its token clock can be moved by the test), and a
`getToken` that asks the "site's backend" (here the test, through `expose_function`) to mint
with the admin key. When the service says `token_expired`, the SDK fetches a new token once
and retries the call; a revoked token is not retried."""
from __future__ import annotations

import threading
import time

import pytest
from werkzeug.serving import make_server

from tests.browser import open_page
from tests.token_support import ADMIN, Clock


@pytest.fixture
def token_server(token_app):
    """The app with tokens on, on a loopback port, its token clock at the real time."""
    server = make_server("127.0.0.1", 0, None, threaded=True)
    origin = f"http://127.0.0.1:{server.server_port}"
    app = token_app(ALLOWED_ORIGINS=origin)
    app.extensions["tokens"].clock = Clock(time.time())
    server.app = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, origin
    server.shutdown()
    thread.join(timeout=5)


def test_the_sdk_renews_an_expired_token_once_and_retries(browser, token_server):
    app, origin = token_server
    minted: list[dict] = []
    admin = app.test_client()

    def mint_token() -> dict:
        """The site's backend: mints a token for the signed-in user with the admin key."""
        response = admin.post("/api/tokens", json={"subject": "browser-user", "origins": [origin], "ttl_s": 600},
                              headers={"x-admin-key": ADMIN})
        assert response.status_code == 200, response.get_json()
        minted.append(response.get_json()["data"])
        return minted[-1]

    page, problems = open_page(browser, origin, before_load=lambda page: page.expose_function("mintToken", mint_token))
    run = """async (message) => {
        const { default: KimiClient } = await import('/static/kimi-sdk.js');
        window.kimi = window.kimi || new KimiClient({ baseURL: location.origin, getToken: () => window.mintToken() });
        try { return { ok: true, message: (await window.kimi.chat(message)).data.message }; }
        catch (error) { return { ok: false, status: error.status, code: error.code }; }
    }"""
    first = page.evaluate(run, "hi")
    assert first == {"ok": True, "message": "[offline simulator] You said: hi"}
    assert len(minted) == 1

    # The service's clock passes the token's expiry; the browser's does not, so only the
    # service's 401 token_expired can make the SDK renew.
    app.extensions["tokens"].clock.now += 601
    second = page.evaluate(run, "again")
    assert second == {"ok": True, "message": "[offline simulator] You said: again"}
    assert len(minted) == 2 and minted[1]["token"] != minted[0]["token"]

    # Revoked: a 401 the SDK does not renew for.
    assert admin.delete("/api/tokens/browser-user", headers={"x-admin-key": ADMIN}).status_code == 200
    third = page.evaluate(run, "once more")
    assert third == {"ok": False, "status": 401, "code": "token_revoked"}
    assert len(minted) == 2
    problems.assert_none("401")
