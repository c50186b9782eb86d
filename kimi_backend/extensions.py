"""Extension objects, created unbound and configured per app through `app.config` (Talisman,
which keeps its options on itself, is created per app). The limiter's logic is in ratelimit.py."""
from __future__ import annotations

import functools
import types

import flask
from flask import Flask
from flask_cors import CORS
from flask_talisman import Talisman
from werkzeug.datastructures import Headers

from .auth import client_identity
from .ratelimit import AppLimiter

# The policy the static test page satisfies: only external same-origin scripts and styles.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
                           "form-action 'self'; frame-ancestors 'none'")
# Features a chat API never needs; named ones only (browsers log unknown names as errors).
PERMISSIONS_POLICY = "camera=(), geolocation=(), microphone=(), payment=(), usb=()"

limiter = AppLimiter(key_func=client_identity)
cors = CORS()


class SecurityHeaders(Talisman):
    """flask-talisman, parsing the content security policy once instead of on every response
    (it re-parses the policy string each time; that is the largest part of its per-request
    cost here), and building each endpoint's options once. The caches are sound because no
    view sets its own options and no nonce is used, so neither the options nor the parsed
    policy ever vary. A test pins the overridden members (tests/test_security_headers.py)."""

    @functools.lru_cache(maxsize=8)
    def _parse_policy(self, policy):
        # Only strings reach here (dicts are unhashable and would raise): our policies are strings.
        return super()._parse_policy(policy)

    def _get_local_options(self):
        # Asked three times per request, each time building the options afresh from the same
        # inputs: this Talisman's options and the view's own (none of our views has any). So
        # they are built once per endpoint. Another private member: the same test pins it.
        options_by_endpoint = self.__dict__.setdefault("_options_by_endpoint", {})
        endpoint = flask.request.endpoint
        options = options_by_endpoint.get(endpoint)
        if options is None:
            options = options_by_endpoint[endpoint] = super()._get_local_options()
        return options

    def _set_response_headers(self, response):
        # Talisman sets each of its five or six headers with `Headers.__setitem__`, which compares
        # the name with every header already on the response. What it sets depends only on the
        # endpoint's options (see above) and on whether HSTS applies to this request, so the
        # headers are worked out once per (endpoint, HSTS) and then added: nothing else on our
        # responses carries these names (tests/test_security_headers.py compares the result with
        # flask-talisman's own). Another private member: the same test pins it.
        request = flask.request._get_current_object()  # one context lookup, not one per use
        hsts = bool(self.strict_transport_security) and (
            request.is_secure or request.headers.get("X-Forwarded-Proto", "http") == "https")
        headers_by_case = self.__dict__.setdefault("_headers_by_case", {})
        case = (request.endpoint, hsts)
        headers = headers_by_case.get(case)
        if headers is None:
            scratch = types.SimpleNamespace(headers=Headers())
            super()._set_response_headers(scratch)
            headers = headers_by_case[case] = list(scratch.headers.items())
        add = response.headers.add
        for name, value in headers:
            add(name, value)
        return response


def init_security_headers(app: Flask, force_https: bool) -> None:
    """nosniff, `X-Frame-Options: DENY`, `Referrer-Policy`, the CSP, and HSTS on HTTPS
    requests (as the proxy forwarded them, see proxies.py); plain HTTP is redirected only with
    FORCE_HTTPS. One Talisman per app: it keeps its options on itself."""
    talisman = app.extensions["talisman"] = SecurityHeaders(
        app, force_https=force_https, frame_options="DENY", content_security_policy=CONTENT_SECURITY_POLICY,
        referrer_policy="no-referrer", permissions_policy=PERMISSIONS_POLICY,
        strict_transport_security_include_subdomains=False,
        # No cookies here; this also spares Talisman a config write on every request.
        session_cookie_secure=False)
    # flask-talisman's two before-request hooks find out on every request, through the request
    # context, that they have nothing to do: the redirect without FORCE_HTTPS, the nonce with no
    # policy section asking for one. Both follow from this Talisman's options alone, since no
    # view sets its own (tests/test_security_headers.py pins the hooks' conditions).
    hooks = app.before_request_funcs[None]
    if not force_https:
        hooks.remove(talisman._force_https)
    if not talisman.content_security_policy_nonce_in:
        hooks.remove(talisman._make_nonce)
