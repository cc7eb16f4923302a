"""Passkeys on the hosted pages through the Flask test client: the login page's "Sign in with a
passkey", the MFA page's "Use a passkey", the script and its Content-Security-Policy, and the
ceremony's binding to the browser's session and CSRF token."""

from __future__ import annotations

import re
import time

import pytest

from saas.auth import mfa
from saas.services import services
from tests.auth_helpers import REDIRECT, authorize_params, csrf_of, pkce_pair, query_of, register_client
from tests.conftest import TEST_PASSWORD
from tests.webauthn_device import Passkey

OPTIONS, VERIFY = "/oauth/webauthn/options", "/oauth/webauthn/verify"


def _setup(api, client, device: Passkey):
    owner = api.signup("acme")
    h = api.auth(owner)
    start = client.post("/api/v1/me/webauthn/registration/options", headers=h).get_json()
    r = client.post(
        "/api/v1/me/webauthn/registration/verify",
        json={
            "ceremony_id": start["ceremony_id"],
            "credential": device.register(start["publicKey"]),
            "name": "K",
        },
        headers=h,
    )
    assert r.status_code == 201, r.get_json()
    app_client = register_client(client, h, first_party=True, client_type="public")
    return owner, app_client


def _exchange(client, app_client, code, verifier):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "client_id": app_client["client_id"],
    }
    r = client.post("/oauth/token", data=data)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _ceremony(client, csrf: str, purpose: str, device: Passkey) -> dict:
    options = client.post(OPTIONS, json={"purpose": purpose}, headers={"X-CSRF-Token": csrf})
    assert options.status_code == 200, options.get_json()
    return {"purpose": purpose, "credential": device.sign(options.get_json()["publicKey"])}


def test_login_page_offers_a_passkey_under_its_csp(api, client):
    _owner, app_client = _setup(api, client, Passkey())
    _verifier, challenge = pkce_pair()
    client.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
    page = client.get("/oauth/login")
    html = page.get_data(as_text=True)
    assert 'id="passkey"' in html and 'data-purpose="login"' in html
    assert '<script src="/oauth/static/passkey.js"></script>' in html
    assert "<script>" not in html  # nothing inline
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    script = client.get("/oauth/static/passkey.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    assert "navigator.credentials.get" in script.get_data(as_text=True)


def test_passkey_sign_in_on_the_login_page_yields_a_code(api, client, app):
    _owner, app_client = _setup(api, client, device := Passkey(uv=True))
    verifier, challenge = pkce_pair()
    client.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
    csrf = csrf_of(client.get("/oauth/login").get_data(as_text=True))
    r = client.post(VERIFY, json=_ceremony(client, csrf, "login", device), headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.get_json()
    location = r.get_json()["redirect"]
    assert location.startswith(REDIRECT) and query_of(location)["state"] == "st-123"
    tokens = _exchange(client, app_client, query_of(location)["code"], verifier)
    assert services(app).tokens.verify(tokens["access_token"])["amr"] == ["hwk", "user", "mfa"]


def test_the_ceremony_needs_this_browsers_csrf_token_and_session(api, client, app):
    _owner, app_client = _setup(api, client, device := Passkey())
    _verifier, challenge = pkce_pair()
    client.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
    csrf = csrf_of(client.get("/oauth/login").get_data(as_text=True))
    r = client.post(OPTIONS, json={"purpose": "login"}, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_challenge_invalid"
    r = client.post(OPTIONS, json={"purpose": "other"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 400
    body = _ceremony(client, csrf, "login", device)
    # another browser (its own session and sign-in in progress) cannot finish this ceremony
    other = app.test_client()
    other.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
    other_csrf = csrf_of(other.get("/oauth/login").get_data(as_text=True))
    r = other.post(VERIFY, json=body, headers={"X-CSRF-Token": other_csrf})
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_challenge_invalid"
    assert "login" not in (other.get("/oauth/login").headers.get("Set-Cookie") or "")


@pytest.fixture()
def clock(time_machine):
    time_machine.move_to(1_900_000_000, tick=False)
    return time_machine


def test_passkey_as_the_second_factor_on_the_mfa_page(api, client, app, clock):
    owner, app_client = _setup(api, client, device := Passkey(uv=False))
    h = api.auth(owner)
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    code = mfa.totp_at(secret, int(time.time() // 30))
    assert client.post("/api/v1/me/mfa/totp/confirm", json={"code": code}, headers=h).status_code == 200
    verifier, challenge = pkce_pair()
    client.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
    csrf = csrf_of(client.get("/oauth/login").get_data(as_text=True))
    r = client.post(
        "/oauth/login", data={"email": "owner@acme.test", "password": TEST_PASSWORD, "csrf_token": csrf}
    )
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth/mfa")
    html = client.get("/oauth/mfa").get_data(as_text=True)
    assert re.search(r'data-purpose="mfa"[^>]*>Use a passkey<', html)
    r = client.post(VERIFY, json=_ceremony(client, csrf, "mfa", device), headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.get_json()
    location = r.get_json()["redirect"]
    tokens = _exchange(client, app_client, query_of(location)["code"], verifier)
    assert services(app).tokens.verify(tokens["access_token"])["amr"] == ["pwd", "hwk", "user", "mfa"]


def test_a_passkey_without_uv_for_a_totp_user_still_asks_for_the_code(api, client, app, clock):
    owner, app_client = _setup(api, client, device := Passkey(uv=False))
    h = api.auth(owner)
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    code = mfa.totp_at(secret, int(time.time() // 30))
    assert client.post("/api/v1/me/mfa/totp/confirm", json={"code": code}, headers=h).status_code == 200
    _verifier, challenge = pkce_pair()
    client.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
    csrf = csrf_of(client.get("/oauth/login").get_data(as_text=True))
    r = client.post(VERIFY, json=_ceremony(client, csrf, "login", device), headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.get_json()["redirect"].endswith("/oauth/mfa")
    # the passkey was the first factor: the MFA page offers no passkey, and refuses one
    assert 'data-purpose="mfa"' not in client.get("/oauth/mfa").get_data(as_text=True)
    r = client.post(OPTIONS, json={"purpose": "mfa"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_challenge_invalid"
