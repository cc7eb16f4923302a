"""Passkeys end to end against a real HTTP server on ``http://localhost:<port>`` (WebAuthn needs a
secure context: localhost is one), RP id ``localhost``: ``requests`` with the software
authenticator, and Debian's Chromium through Playwright with the DevTools protocol's virtual
authenticator (``WebAuthn`` domain) on the hosted login page.

These tests commit for real (their own tenants in the run's database)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt as pyjwt
import pytest
import requests

from tests.conftest import TEST_PASSWORD
from tests.helpers import live_server, verify_by_link
from tests.peers import chromium_available, launch_chromium
from tests.webauthn_device import Passkey


@pytest.fixture(scope="module")
def live(settings, engine, redis_client):
    """The app served by werkzeug on a free loopback port, its issuer ``http://localhost:<port>``."""
    with live_server(settings, engine, redis_client, name="localhost") as (base, _app, _settings):
        yield base


def _signup(base: str, engine) -> dict:
    slug = f"pk-{uuid.uuid4().hex[:8]}"
    email = f"owner@{slug}.test"
    r = requests.post(
        f"{base}/api/v1/signup",
        json={
            "tenant": {"name": "Passkeys Inc", "slug": slug},
            "owner": {"email": email, "password": TEST_PASSWORD},
        },
        timeout=10,
    )
    assert r.status_code == 201, r.text
    verify_by_link(base, engine, email)  # registering clients needs a verified email
    return {**r.json(), "email": email}


def _bearer(owner: dict) -> dict:
    return {"Authorization": f"Bearer {owner['token']['access_token']}"}


def test_register_and_sign_in_without_password_over_http(live, engine):
    base = live
    owner = _signup(base, engine)
    device = Passkey(uv=True)
    options = requests.post(
        f"{base}/api/v1/me/webauthn/registration/options", headers=_bearer(owner), timeout=10
    )
    assert options.status_code == 200, options.text
    body = options.json()
    credential = device.register(body["publicKey"], origin=base)
    r = requests.post(
        f"{base}/api/v1/me/webauthn/registration/verify",
        json={"ceremony_id": body["ceremony_id"], "credential": credential, "name": "Soft key"},
        headers=_bearer(owner),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    options = requests.post(f"{base}/api/v1/auth/webauthn/options", json={}, timeout=10).json()
    r = requests.post(
        f"{base}/api/v1/auth/webauthn/verify",
        json={
            "ceremony_id": options["ceremony_id"],
            "credential": device.sign(options["publicKey"], origin=base),
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    jwks = pyjwt.PyJWKClient(f"{base}/.well-known/jwks.json")
    claims = pyjwt.decode(
        token,
        jwks.get_signing_key_from_jwt(token).key,
        algorithms=["RS256", "ES256"],
        audience="saas-api",
        issuer=base,
    )
    assert claims["amr"] == ["hwk", "user", "mfa"] and claims["sub"] == owner["user"]["id"]
    assert requests.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10).ok
    # the page's origin is checked: the same passkey answering another site is refused
    options = requests.post(f"{base}/api/v1/auth/webauthn/options", json={}, timeout=10).json()
    r = requests.post(
        f"{base}/api/v1/auth/webauthn/verify",
        json={
            "ceremony_id": options["ceremony_id"],
            "credential": device.sign(options["publicKey"], origin="https://evil.example"),
        },
        timeout=10,
    )
    assert r.status_code == 401 and r.json()["code"] == "webauthn_failed"


_REGISTER_IN_PAGE = """
async ([token]) => {
  const h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"};
  const buf = (s) => {
    const raw = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    return Uint8Array.from(raw, c => c.charCodeAt(0)).buffer;
  };
  const txt = (b) => btoa(String.fromCharCode(...new Uint8Array(b)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const start = await fetch("/api/v1/me/webauthn/registration/options", {method: "POST", headers: h});
  const o = await start.json();
  const pk = o.publicKey;
  pk.challenge = buf(pk.challenge);
  pk.user.id = buf(pk.user.id);
  pk.excludeCredentials = (pk.excludeCredentials || []).map(c => ({...c, id: buf(c.id)}));
  const c = await navigator.credentials.create({publicKey: pk});
  const response = {
    clientDataJSON: txt(c.response.clientDataJSON),
    attestationObject: txt(c.response.attestationObject),
    transports: c.response.getTransports(),
  };
  const credential = {id: c.id, rawId: txt(c.rawId), type: c.type, response,
    clientExtensionResults: c.getClientExtensionResults()};
  const r = await fetch("/api/v1/me/webauthn/registration/verify", {method: "POST", headers: h,
    body: JSON.stringify({ceremony_id: o.ceremony_id, credential, name: "Chromium"})});
  return [r.status, await r.json()];
}
"""


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium or playwright is not installed")
def test_chromium_virtual_authenticator_signs_in_on_the_hosted_login_page(live, engine):
    from playwright.sync_api import sync_playwright

    base = live
    owner = _signup(base, engine)
    r = requests.post(
        f"{base}/api/v1/clients",
        json={
            "name": "Passkey app",
            "redirect_uris": [f"{base}/callback"],
            "client_type": "public",
            "first_party": True,
        },
        headers=_bearer(owner),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    client_id = r.json()["client_id"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    authorize = f"{base}/oauth/authorize?" + urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": f"{base}/callback",
            "scope": "openid api",
            "state": "st-pk",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            context = browser.new_context()
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable")
            cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                    }
                },
            )
            violations: list[str] = []
            page.on(
                "console",
                lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.goto(f"{base}/healthz")
            status, created = page.evaluate(_REGISTER_IN_PAGE, [owner["token"]["access_token"]])
            assert status == 201, created
            assert created["discoverable"] is True and created["name"] == "Chromium"
            page.goto(authorize)
            assert page.url.endswith("/oauth/login")
            with page.expect_request(lambda req: req.url.startswith(f"{base}/callback")) as landed:
                page.click("#passkey")
            callback = landed.value.url
            assert violations == []
        finally:
            browser.close()
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == ["st-pk"]
    r = requests.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": f"{base}/callback",
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    claims = pyjwt.decode(r.json()["access_token"], options={"verify_signature": False})
    # Chromium's virtual authenticator is device-bound (BE=0) and verified the user
    assert claims["amr"] == ["hwk", "user", "mfa"] and claims["sub"] == owner["user"]["id"]
