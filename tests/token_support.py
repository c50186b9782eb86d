"""What the browser-token tests share: the secrets and origins, a hand-moved clock, and small
helpers to mint and present tokens."""
from __future__ import annotations

import jwt

SECRET = "token-secret-one-0123456789abcdefghijklmnop"
NEW_SECRET = "token-secret-two-0123456789abcdefghijklmnop"
ADMIN = "admin-key-for-tests-0123456789"
SITE = "https://app.example"
OTHER_SITE = "https://other.example"
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


class Clock:
    """A clock the test moves by hand; installed as the token service's `clock`."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def token_config(**overrides: str) -> dict[str, str]:
    """Settings with tokens and the admin key on, and two allowed origins."""
    return {"TOKEN_SECRET": SECRET, "ADMIN_API_KEY": ADMIN, "ALLOWED_ORIGINS": f"{SITE},{OTHER_SITE}", **overrides}


def with_clock(app):
    """Puts the app's token service (when tokens are on) on a `Clock` at T0."""
    if "tokens" in app.extensions:
        app.extensions["tokens"].clock = Clock()
    return app


def mint(client, expect: int = 200, **body):
    """`POST /api/tokens` with the admin key; the `data` on success, else the error body."""
    response = client.post("/api/tokens", json=body, headers={"x-admin-key": ADMIN})
    assert response.status_code == expect, response.get_json()
    return response.get_json()["data"] if expect == 200 else response.get_json()


def using(token: str, origin: str | None = SITE, style: str = "bearer") -> dict:
    """Headers presenting `token` from a page on `origin` (None: no Origin header)."""
    headers = {"Authorization": f"Bearer {token}"} if style == "bearer" else {"x-api-key": token}
    if origin:
        headers["Origin"] = origin
    return headers


def claims_of(token: str) -> dict:
    """A token's claims, unverified (what anyone holding it can read)."""
    return jwt.decode(token, options={"verify_signature": False})
