"""OpenID Connect logout end to end against a real HTTP server thread: ``requests`` drives the
hosted login and the end-session endpoint like a browser, the outbox worker delivers the
back-channel logout token to a real HTTP receiver, and PyJWT's ``PyJWKClient`` verifies it
against the published ``jwks_uri``.

These tests commit for real (their own tenants in the run's database, dropped at the end).
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlsplit

import jwt as pyjwt
import pytest
import requests

from saas.services import services
from saas.worker import Worker, load_handlers
from tests.auth_helpers import REDIRECT, pkce_pair
from tests.conftest import TEST_PASSWORD
from tests.helpers import live_server, verify_by_link
from tests.test_logout import AFTER_LOGOUT, Receiver, verify_logout_token


@pytest.fixture(scope="module")
def live(settings, engine, redis_client):
    """(base_url, app, settings): the app served by werkzeug on a free loopback port."""
    with live_server(settings, engine, redis_client) as served:
        yield served


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _setup(base: str, app, receiver: Receiver) -> tuple[dict, dict]:
    slug = f"lo-{uuid.uuid4().hex[:8]}"
    r = requests.post(
        f"{base}/api/v1/signup",
        json={
            "tenant": {"name": "Logout", "slug": slug},
            "owner": {"email": f"owner@{slug}.test", "password": TEST_PASSWORD},
        },
        timeout=10,
    )
    assert r.status_code == 201, r.text
    owner = r.json()
    verify_by_link(base, app, owner["user"]["email"])  # registering clients needs a verified email
    r = requests.post(
        f"{base}/api/v1/clients",
        json={
            "name": "RP",
            "client_type": "public",
            "first_party": True,
            "redirect_uris": [REDIRECT],
            "post_logout_redirect_uris": [AFTER_LOGOUT],
            "backchannel_logout_uri": f"{receiver.url}/backchannel",
            "backchannel_logout_session_required": True,
        },
        headers={"Authorization": f"Bearer {owner['token']['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return owner, r.json()


def _browser_sign_in(base: str, browser: requests.Session, rp: dict, email: str) -> dict:
    verifier, challenge = pkce_pair()
    page = browser.get(
        f"{base}/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": rp["client_id"],
            "redirect_uri": REDIRECT,
            "scope": "openid email",
            "state": "st",
            "nonce": "n-1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        timeout=10,
    )
    assert page.status_code == 200 and page.url.endswith("/oauth/login"), page.text
    r = browser.post(
        f"{base}/oauth/login",
        data={"email": email, "password": TEST_PASSWORD, "csrf_token": _csrf(page.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT), r.text
    code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    r = requests.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": rp["client_id"],
            "redirect_uri": REDIRECT,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _deliver(app, settings) -> None:
    load_handlers()
    Worker(services(app).database, settings, services={"app": app}).run_until_idle()


def test_hosted_login_then_end_session_sends_a_verified_logout_token(live, receiver):
    base, app, settings = live
    owner, rp = _setup(base, app, receiver)
    browser = requests.Session()
    tokens = _browser_sign_in(base, browser, rp, owner["user"]["email"])
    jwks_client = pyjwt.PyJWKClient(f"{base}/.well-known/jwks.json")
    id_token = tokens["id_token"]
    id_claims = pyjwt.decode(
        id_token,
        jwks_client.get_signing_key_from_jwt(id_token).key,
        algorithms=["RS256", "ES256"],
        audience=rp["client_id"],
        issuer=base,
    )
    r = browser.get(
        f"{base}/oauth/end-session",
        params={"id_token_hint": id_token, "post_logout_redirect_uri": AFTER_LOGOUT, "state": "bye"},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302 and r.headers["Location"] == f"{AFTER_LOGOUT}?state=bye", r.text
    # the refresh token died with the browser session
    refreshed = requests.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": rp["client_id"],
        },
        timeout=10,
    )
    assert refreshed.status_code == 400
    _deliver(app, settings)
    (logout_token,) = receiver.tokens("/backchannel")
    claims = pyjwt.decode(
        logout_token,
        jwks_client.get_signing_key_from_jwt(logout_token).key,
        algorithms=["RS256", "ES256"],
        audience=rp["client_id"],
        issuer=base,
    )
    assert claims["sid"] == id_claims["sid"] and claims["sub"] == id_claims["sub"] == owner["user"]["id"]
    jwks = requests.get(f"{base}/.well-known/jwks.json", timeout=10).json()
    verify_logout_token(logout_token, jwks, rp["client_id"], base)


def test_end_session_without_hint_confirms_through_the_form(live, receiver):
    base, app, settings = live
    owner, rp = _setup(base, app, receiver)
    browser = requests.Session()
    _browser_sign_in(base, browser, rp, owner["user"]["email"])
    page = browser.get(
        f"{base}/oauth/end-session",
        params={"client_id": rp["client_id"], "post_logout_redirect_uri": AFTER_LOGOUT, "state": "s2"},
        timeout=10,
    )
    assert page.status_code == 200 and 'value="logout"' in page.text
    r = browser.post(
        f"{base}/oauth/end-session",
        data={"decision": "logout", "csrf_token": _csrf(page.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302 and r.headers["Location"] == f"{AFTER_LOGOUT}?state=s2"
    _deliver(app, settings)
    assert len(receiver.tokens("/backchannel")) == 1


def test_chromium_signs_in_then_confirms_the_sign_out(live, receiver):
    """Debian's Chromium through Playwright: the hosted login, then the end-session confirmation
    page without a hint, its form answered by a click; the browser lands on the registered
    post-logout URI with the state, and the client gets its logout token."""
    from playwright.sync_api import sync_playwright

    from tests.peers import chromium_available, launch_chromium

    if not chromium_available():
        pytest.skip("chromium is not installed")
    base, app, settings = live
    slug = f"lo-{uuid.uuid4().hex[:8]}"
    owner = requests.post(
        f"{base}/api/v1/signup",
        json={
            "tenant": {"name": "Logout", "slug": slug},
            "owner": {"email": f"owner@{slug}.test", "password": TEST_PASSWORD},
        },
        timeout=10,
    ).json()
    verify_by_link(base, app, owner["user"]["email"])  # registering clients needs a verified email
    rp = requests.post(
        f"{base}/api/v1/clients",
        json={
            "name": "RP",
            "client_type": "public",
            "first_party": True,
            "redirect_uris": [f"{base}/callback"],
            "post_logout_redirect_uris": [f"{base}/signed-out"],
            "backchannel_logout_uri": f"{receiver.url}/backchannel",
        },
        headers={"Authorization": f"Bearer {owner['token']['access_token']}"},
        timeout=10,
    ).json()
    verifier, challenge = pkce_pair()
    authorize = (
        requests.Request(
            "GET",
            f"{base}/oauth/authorize",
            params={
                "response_type": "code",
                "client_id": rp["client_id"],
                "redirect_uri": f"{base}/callback",
                "scope": "openid",
                "state": "st",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        .prepare()
        .url
    )
    end_session = (
        requests.Request(
            "GET",
            f"{base}/oauth/end-session",
            params={
                "client_id": rp["client_id"],
                "post_logout_redirect_uri": f"{base}/signed-out",
                "state": "s3",
            },
        )
        .prepare()
        .url
    )
    landed: dict[str, str] = {}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(authorize)
            page.fill("#email", f"owner@{slug}.test")
            page.fill("#password", TEST_PASSWORD)
            page.click("#submit")
            page.wait_for_url(re.compile(r".*/callback\?.*"))  # not served here: only the URL matters
            # the client redeems its code (a client that received no tokens is told nothing)
            redeemed = requests.post(
                f"{base}/oauth/token",
                data={
                    "grant_type": "authorization_code",
                    "code": parse_qs(urlsplit(page.url).query)["code"][0],
                    "code_verifier": verifier,
                    "client_id": rp["client_id"],
                    "redirect_uri": f"{base}/callback",
                },
                timeout=10,
            )
            assert redeemed.status_code == 200, redeemed.text
            page.goto(end_session)
            assert rp["name"] in page.text_content("#question")
            page.click("#logout")
            page.wait_for_url(re.compile(r".*/signed-out\?.*"))
            landed["url"] = page.url
        finally:
            browser.close()
    assert parse_qs(urlsplit(landed["url"]).query) == {"state": ["s3"]}
    _deliver(app, settings)
    (logout_token,) = receiver.tokens("/backchannel")
    jwks = requests.get(f"{base}/.well-known/jwks.json", timeout=10).json()
    claims = verify_logout_token(logout_token, jwks, rp["client_id"], base)
    assert claims["sub"] == owner["user"]["id"]
