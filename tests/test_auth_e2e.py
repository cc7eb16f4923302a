"""End to end against a real HTTP server thread: Authlib's OAuth 2.0 client drives the
authorization code flow with PKCE, refresh rotation and revocation; PyJWT's ``PyJWKClient``
verifies the tokens against ``jwks_uri``; Playwright drives Debian's chromium through the hosted
login, MFA and consent pages.

These tests commit for real (their own tenants in the run's database, dropped at the end).
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlsplit

import jwt as pyjwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from saas.auth import mfa
from tests.conftest import TEST_PASSWORD
from tests.helpers import live_server, verify_by_link
from tests.peers import chromium_available, launch_chromium


@pytest.fixture(scope="module")
def live(settings, engine, redis_client):
    """(base_url, app): the app served by werkzeug on a free loopback port, committing for real."""
    with live_server(settings, engine, redis_client) as (base, app, _settings):
        yield base, app


def _signup(base: str, app) -> dict:
    slug = f"e2e-{uuid.uuid4().hex[:8]}"
    r = requests.post(
        f"{base}/api/v1/signup",
        json={
            "tenant": {"name": "E2E Inc", "slug": slug},
            "owner": {"email": f"owner@{slug}.test", "password": TEST_PASSWORD},
        },
        timeout=10,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    body["email"] = f"owner@{slug}.test"
    verify_by_link(base, app, body["email"])  # clients and invitations need a verified owner
    return body


def _register(base: str, owner: dict, **fields) -> dict:
    r = requests.post(
        f"{base}/api/v1/clients",
        json={"name": "E2E app", "redirect_uris": [f"{base}/callback"], **fields},
        headers={"Authorization": f"Bearer {owner['token']['access_token']}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_code_flow_with_authlib_client_and_pyjwt(live):
    base, app = live
    meta = requests.get(f"{base}/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == base
    owner = _signup(base, app)
    app_client = _register(base, owner, client_type="public", first_party=True)

    oauth = OAuth2Session(
        app_client["client_id"],
        redirect_uri=f"{base}/callback",
        scope="openid email api",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(64)
    nonce = generate_token(16)
    url, state = oauth.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )

    browser = requests.Session()
    page = browser.get(url, timeout=10)
    assert page.status_code == 200 and "Sign in" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = browser.post(
        f"{base}/oauth/login",
        data={"email": owner["email"], "password": TEST_PASSWORD, "csrf_token": csrf},
        allow_redirects=False,
        timeout=10,
    )
    assert done.status_code == 302, done.text
    callback = done.headers["Location"]
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == [state] and params["iss"] == [base]

    token = oauth.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)
    assert {"access_token", "refresh_token", "id_token"} <= set(token)

    jwks = pyjwt.PyJWKClient(meta["jwks_uri"])
    access_key = jwks.get_signing_key_from_jwt(token["access_token"]).key
    claims = pyjwt.decode(
        token["access_token"], access_key, algorithms=["RS256", "ES256"], audience="saas-api", issuer=base
    )
    assert pyjwt.get_unverified_header(token["access_token"])["typ"] == "at+jwt"
    assert claims["client_id"] == app_client["client_id"] and claims["tid"] == owner["tenant"]["id"]
    assert claims["amr"] == ["pwd"] and "auth_time" in claims and "acr" in claims
    id_claims = pyjwt.decode(
        token["id_token"],
        jwks.get_signing_key_from_jwt(token["id_token"]).key,
        algorithms=["RS256", "ES256"],
        audience=app_client["client_id"],
        issuer=base,
    )
    assert id_claims["nonce"] == nonce
    # at_hash per OIDC Core 3.1.3.6, computed independently
    import base64
    import hashlib

    digest = hashlib.sha256(token["access_token"].encode()).digest()
    assert id_claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()

    me = oauth.get(f"{base}/api/v1/me")
    assert me.status_code == 200 and me.json()["user"]["email"] == owner["email"]
    info = oauth.get(meta["userinfo_endpoint"])
    assert info.json()["sub"] == claims["sub"]

    old_refresh = token["refresh_token"]
    new_token = oauth.refresh_token(meta["token_endpoint"], refresh_token=old_refresh)
    assert new_token["refresh_token"] != old_refresh
    oauth.revoke_token(meta["revocation_endpoint"], token=new_token["refresh_token"])
    dead = requests.post(
        meta["token_endpoint"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": new_token["refresh_token"],
            "client_id": app_client["client_id"],
        },
        timeout=10,
    )
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    # the code cannot be redeemed twice
    again = requests.post(
        meta["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "redirect_uri": f"{base}/callback",
            "code_verifier": verifier,
            "client_id": app_client["client_id"],
        },
        timeout=10,
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_client_credentials_and_introspection_with_authlib(live):
    base, app = live
    owner = _signup(base, app)
    svc = _register(
        base,
        owner,
        client_type="confidential",
        grant_types=["client_credentials"],
        redirect_uris=[],
        scope="api",
        resource_server=True,  # only a resource server learns anything from introspection
    )
    oauth = OAuth2Session(svc["client_id"], svc["client_secret"], scope="api")
    token = oauth.fetch_token(f"{base}/oauth/token", grant_type="client_credentials")
    claims = pyjwt.decode(
        token["access_token"],
        pyjwt.PyJWKClient(f"{base}/.well-known/jwks.json")
        .get_signing_key_from_jwt(token["access_token"])
        .key,
        algorithms=["RS256", "ES256"],
        audience="saas-api",
        issuer=base,
    )
    assert claims["sub"] == svc["client_id"]
    r = requests.post(
        f"{base}/oauth/introspect",
        data={"token": token["access_token"]},
        auth=(svc["client_id"], svc["client_secret"]),
        timeout=10,
    )
    assert r.json()["active"] is True


def _code_via_hosted_login(base: str, owner: dict, client_id: str) -> tuple[str, str]:
    """(code, verifier) through the hosted login page with plain HTTP."""
    import base64
    import hashlib

    verifier = generate_token(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    browser = requests.Session()
    page = browser.get(
        f"{base}/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": f"{base}/callback",
            "scope": "openid api",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        timeout=10,
    )
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    done = browser.post(
        f"{base}/oauth/login",
        data={"email": owner["email"], "password": TEST_PASSWORD, "csrf_token": csrf},
        allow_redirects=False,
        timeout=10,
    )
    assert done.status_code == 302, done.text
    return parse_qs(urlsplit(done.headers["Location"]).query)["code"][0], verifier


def _slow_issue_tokens(monkeypatch, seconds: float) -> None:
    """Make the server's first token issuance slow, so a second request overlaps it for real."""
    from saas.auth import service

    real = service.issue_tokens
    calls = {"n": 0}

    def slow(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            import time

            time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "issue_tokens", slow)


def _concurrently(first, second, delay: float = 0.2):
    """Run ``first`` in a thread, ``second`` ``delay`` seconds later; both results."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(first)
        time.sleep(delay)
        b = pool.submit(second)
        return a.result(timeout=20), b.result(timeout=20)


def test_concurrent_code_redemption_revokes_the_first_tokens(live, monkeypatch):
    """RFC 6749 section 4.1.2 under a real race: the second redemption arrives while the first is
    still issuing tokens. It must fail, and the tokens the first one issued must end up revoked."""
    base, app = live
    owner = _signup(base, app)
    app_client = _register(base, owner, client_type="public", first_party=True)
    code, verifier = _code_via_hosted_login(base, owner, app_client["client_id"])
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": f"{base}/callback",
        "code_verifier": verifier,
        "client_id": app_client["client_id"],
    }
    _slow_issue_tokens(monkeypatch, 1.0)

    def redeem():
        return requests.post(f"{base}/oauth/token", data=form, timeout=20)

    first, second = _concurrently(redeem, redeem)
    assert first.status_code == 200, first.text
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    dead = requests.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first.json()["refresh_token"],
            "client_id": app_client["client_id"],
        },
        timeout=10,
    )
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"


def test_concurrent_refresh_retry_leaves_one_working_branch(live, monkeypatch):
    """Two overlapping refreshes with the same token (a retry): both answer, the retry's token is
    the one that works, and the other branch presented later revokes the session."""
    base, app = live
    owner = _signup(base, app)
    r0 = owner["token"]["refresh_token"]
    _slow_issue_tokens(monkeypatch, 1.0)

    def refresh(token):
        return requests.post(
            f"{base}/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}, timeout=20
        )

    first, retry = _concurrently(lambda: refresh(r0), lambda: refresh(r0))
    assert first.status_code == 200 and retry.status_code == 200, (first.text, retry.text)
    working = refresh(retry.json()["refresh_token"])
    assert working.status_code == 200, working.text
    assert refresh(first.json()["refresh_token"]).status_code == 400
    assert refresh(working.json()["refresh_token"]).status_code == 400


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium or playwright is not installed")
def test_browser_login_mfa_consent_to_code(live):
    from playwright.sync_api import sync_playwright

    base, app = live
    owner = _signup(base, app)
    headers = {"Authorization": f"Bearer {owner['token']['access_token']}"}
    # registered first: once MFA is on, a password-only token no longer passes step-up
    app_client = _register(base, owner, client_type="public", first_party=False)
    enrol = requests.post(f"{base}/api/v1/me/mfa/totp", headers=headers, timeout=10).json()
    secret = enrol["secret"]
    step = int(mfa._clock() // 30)
    confirmed = requests.post(
        f"{base}/api/v1/me/mfa/totp/confirm",
        json={"code": mfa.totp_at(secret, step)},
        headers=headers,
        timeout=10,
    )
    assert confirmed.status_code == 200, confirmed.text
    oauth = OAuth2Session(
        app_client["client_id"],
        redirect_uri=f"{base}/callback",
        scope="openid api",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(f"{base}/oauth/authorize", code_verifier=verifier)

    captured: dict[str, str] = {}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#email", owner["email"])
            page.fill("#password", "not the password")
            page.click("#submit")
            assert "incorrect" in page.text_content("#error")
            page.fill("#password", TEST_PASSWORD)
            page.click("#submit")
            page.wait_for_selector("#code")
            # the step of now (the browser may take longer than a step to get here), never the
            # one spent on enrolment
            page.fill("#code", mfa.totp_at(secret, max(step + 1, int(mfa._clock() // 30))))
            page.click("#submit")
            page.wait_for_selector("#allow")
            assert "openid" in page.text_content("#scopes")
            page.click("#allow")
            # the client's callback is not served here (404): only the URL matters
            page.wait_for_url(re.compile(r".*/callback\?.*"))
            captured["url"] = page.url
        finally:
            browser.close()
    assert "url" in captured, "the browser never came back to the client"
    params = parse_qs(urlsplit(captured["url"]).query)
    assert params["state"] == [state]
    token = oauth.fetch_token(
        f"{base}/oauth/token", authorization_response=captured["url"], code_verifier=verifier
    )
    claims = pyjwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["amr"] == ["pwd", "otp"]


def test_cli_reset_mfa_on_committed_user(live, database_url, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from saas.cli import main

    base, app = live
    owner = _signup(base, app)
    headers = {"Authorization": f"Bearer {owner['token']['access_token']}"}
    secret = requests.post(f"{base}/api/v1/me/mfa/totp", headers=headers, timeout=10).json()["secret"]
    step = int(mfa._clock() // 30)
    r = requests.post(
        f"{base}/api/v1/me/mfa/totp/confirm",
        json={"code": mfa.totp_at(secret, step)},
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 200
    login = {"email": owner["email"], "password": TEST_PASSWORD}
    assert requests.post(f"{base}/api/v1/auth/login", json=login, timeout=10).json()["code"] == "mfa_required"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SAAS_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", "cli-test")
    monkeypatch.setenv("SAAS_OPERATOR", "ops-oncall")
    result = CliRunner().invoke(main, ["users", "reset-mfa", owner["email"]])
    assert result.exit_code == 0, result.output
    # the signup session was revoked, and the next login needs no second factor
    refresh = requests.post(
        f"{base}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": owner["token"]["refresh_token"]},
        timeout=10,
    )
    assert refresh.status_code == 400
    fresh = requests.post(f"{base}/api/v1/auth/login", json=login, timeout=10)
    assert fresh.status_code == 200
    events = requests.get(
        f"{base}/api/v1/audit-events",
        params={"action": "mfa.reset"},
        headers={"Authorization": f"Bearer {fresh.json()['access_token']}"},
        timeout=10,
    ).json()
    assert events and events[0]["actor"] == {"type": "operator", "id": "ops-oncall"}
    listed = CliRunner().invoke(main, ["clients", "list", "--json"])
    assert listed.exit_code == 0 and isinstance(json.loads(listed.output), list)
