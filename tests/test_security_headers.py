"""Security headers (flask-talisman): on every response, errors included; HSTS only over
HTTPS; the HTTPS redirect off by default, on with FORCE_HTTPS, honouring only a trusted
proxy's forwarded scheme."""
from __future__ import annotations

import inspect
import re

import pytest
from flask_talisman import Talisman

from kimi_backend.extensions import SecurityHeaders

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


@pytest.mark.parametrize("method,path,status", [
    ("get", "/health", 200), ("get", "/api/info", 200), ("get", "/no-such-page", 404),
    ("post", "/api/chat/completion", 415), ("get", "/static/no-such-file.js", 404)])
def test_every_response_carries_the_security_headers(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Security-Policy"] == CSP
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP


def test_hsts_over_https(client):
    response = client.get("/health", base_url="https://localhost")
    max_age = response.headers["Strict-Transport-Security"].split(";")[0]
    assert max_age.startswith("max-age=") and int(max_age.removeprefix("max-age=")) >= 365 * 24 * 3600


def test_no_https_redirect_by_default(client):
    assert client.get("/health").status_code == 200


def test_force_https_redirects_plain_http(make_app):
    client = make_app(FORCE_HTTPS="true").test_client()
    response = client.get("/api/info?x=1")
    assert response.status_code in (301, 302)
    assert response.headers["Location"] == "https://localhost/api/info?x=1"
    assert client.get("/api/info", base_url="https://localhost").status_code == 200


def test_force_https_honours_a_trusted_proxys_scheme(make_app):
    client = make_app(FORCE_HTTPS="true", TRUSTED_PROXY_COUNT="1").test_client()
    response = client.get("/api/info", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 200
    assert "Strict-Transport-Security" in response.headers


def test_without_a_trusted_proxy_a_forwarded_scheme_is_ignored(make_app):
    client = make_app(FORCE_HTTPS="true").test_client()
    response = client.get("/api/info", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code in (301, 302)
    assert "Strict-Transport-Security" not in response.headers


def test_production_runs_without_debug(make_app):
    app = make_app(NODE_ENV="production")
    assert not app.debug and not app.config["PROPAGATE_EXCEPTIONS"]


def test_talismans_idle_hooks_are_left_out_and_the_redirect_kept_when_asked(make_app):
    # init_security_headers drops flask-talisman's redirect hook without FORCE_HTTPS and its
    # nonce hook with no policy section asking for a nonce: each does something only under the
    # option that removal looks at (or a view's own options, which none of ours sets).
    for name in ("_force_https", "_make_nonce"):
        assert list(inspect.signature(getattr(Talisman, name)).parameters) == ["self"]
    redirect = inspect.getsource(Talisman._force_https)
    assert "if local_options['force_https'] and not any(criteria):" in redirect
    assert redirect.count("return ") == 1 and "self.session_cookie_secure" in redirect
    nonce = inspect.getsource(Talisman._make_nonce)
    assert "local_options['content_security_policy_nonce_in'] and" in nonce and "return" not in nonce
    def hooks(app):
        return {getattr(hook, "__name__", "") for hook in app.before_request_funcs[None]}
    assert not {"_force_https", "_make_nonce"} & hooks(make_app())
    assert "_force_https" in hooks(make_app(FORCE_HTTPS="true")) and "_make_nonce" not in hooks(make_app(FORCE_HTTPS="true"))


def test_the_overridden_talisman_member_is_unchanged():
    # SecurityHeaders caches flask-talisman's private _parse_policy (kimi_backend/extensions.py):
    # a flask-talisman that renames it, reshapes it or stops calling it for the CSP must fail
    # here rather than silently parse on every response or drop the header.
    assert list(inspect.signature(Talisman._parse_policy).parameters) == ["self", "policy"]
    assert inspect.signature(SecurityHeaders._parse_policy.__wrapped__) == inspect.signature(Talisman._parse_policy)
    assert "self._parse_policy(" in inspect.getsource(Talisman._set_content_security_policy_headers)


def test_the_cached_talisman_options_depend_only_on_the_endpoint():
    # SecurityHeaders builds flask-talisman's private _get_local_options once per endpoint: sound
    # while they come from the Talisman's own settings and the view's, and nothing writes to them.
    source = inspect.getsource(Talisman._get_local_options)
    assert list(inspect.signature(Talisman._get_local_options).parameters) == ["self"]
    assert "flask.request.endpoint" in source and "talisman_view_options" in source
    assert "flask.request." not in source.replace("flask.request.endpoint", "")
    module = inspect.getsource(inspect.getmodule(Talisman))
    assert not re.search(r"options\[[^\]]+\]\s*=[^=]", module), "flask-talisman now writes into the options"


def test_every_endpoint_gets_its_own_headers(client):
    # The page and the API differ in nothing Talisman sets, but each endpoint's options are its own.
    for path in ("/", "/health", "/api/info", "/health"):
        response = client.get(path)
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_the_security_headers_are_flask_talismans_own(make_app):
    # SecurityHeaders works out Talisman's headers once per endpoint and HSTS case and adds them:
    # the same headers, once each, as flask-talisman itself sets, over HTTP and HTTPS, and on
    # every kind of response.
    source = inspect.getsource(Talisman._set_response_headers)
    assert list(inspect.signature(Talisman._set_response_headers).parameters) == ["self", "response"]
    assert "flask.request" not in source.replace("flask.request.endpoint", "")
    hsts_source = inspect.getsource(Talisman._set_hsts_headers)
    assert "flask.request.is_secure" in hsts_source and "X-Forwarded-Proto" in hsts_source
    ours = make_app()
    stock = make_app()
    talisman = stock.extensions["talisman"]
    stock.after_request_funcs[None].remove(talisman._set_response_headers)
    stock.after_request_funcs[None].append(lambda response: Talisman._set_response_headers(talisman, response))
    names = {"Permissions-Policy", "X-Frame-Options", "X-Content-Type-Options", "Content-Security-Policy",
             "Referrer-Policy", "Strict-Transport-Security", "X-XSS-Protection", "Feature-Policy", "Document-Policy"}
    for base_url in ("http://localhost", "https://localhost", "http://localhost"):
        for method, path in (("get", "/"), ("get", "/health"), ("get", "/no-such-page"),
                             ("post", "/api/chat/completion"), ("get", "/api/info")):
            got = [getattr(app.test_client(), method)(path, base_url=base_url) for app in (ours, stock)]
            security = [[(k, v) for k, v in response.headers.items() if k in names] for response in got]
            assert security[0] == security[1] and len({k for k, _ in security[0]}) == len(security[0]) >= 5, \
                (base_url, path, security)
            assert ("Strict-Transport-Security" in dict(security[0])) == base_url.startswith("https")
