"""The identity lifecycle through the real service: gunicorn with 2 workers and the rate limiter
on, ``saas worker`` in its own process delivering the outbox to a real SMTP server (aiosmtpd),
``requests`` as the client, the soft authenticator for passkeys, Debian's Chromium (Playwright)
with its virtual authenticator on the hosted login page, and PyJWT verifying tokens against the
published ``jwks_uri``. Each test walks the flows a user would: signup and verification, forgot
and reset, password and email change, passkeys, OpenID Connect logout (RP-initiated and
back-channel), the personal-data export and account deletion.

The issuer is ``http://localhost:<port>`` (WebAuthn needs a secure context; localhost is one) and
``SAAS_ENV`` is ``development``: the only difference from production these flows see is that a
client may register, and the worker may deliver to, an ``http`` back-channel logout URI on a
loopback address (the receiver).

These tests commit for real (their own tenants in the run's database, dropped at the end).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt as pyjwt
import pyotp
import pytest
import requests

from tests.auth_helpers import REDIRECT, pkce_pair
from tests.conftest import TEST_PASSWORD, _redis_url
from tests.helpers import drop_tenant, signup_over_http
from tests.peers import ROOT, Inbox, chromium_available, gunicorn_server, launch_chromium, smtp_inbox, stop
from tests.test_logout import AFTER_LOGOUT, Receiver, verify_logout_token
from tests.test_webauthn_e2e import _REGISTER_IN_PAGE as REGISTER_IN_PAGE
from tests.webauthn_device import Passkey

NEW_PASSWORD = "a brand new passphrase for gunicorn"
ALGORITHMS = ["RS256", "ES256"]


@dataclass
class Stack:
    base: str
    inbox: Inbox
    tenants: list[str]

    def jwks(self) -> pyjwt.PyJWKClient:
        config = requests.get(f"{self.base}/.well-known/openid-configuration", timeout=10).json()
        return pyjwt.PyJWKClient(config["jwks_uri"])


@pytest.fixture(scope="module")
def stack(database_url, worker_id_str, redis_client, engine, tmp_path_factory) -> Iterator[Stack]:
    """gunicorn (2 sync workers, limiter on) and ``saas worker`` on the run's database, the
    worker's mail going to a real SMTP server."""
    tmp = tmp_path_factory.mktemp("identity-gunicorn")
    tenants: list[str] = []
    try:
        with smtp_inbox() as inbox:
            env = {
                "SECRET_KEY": "gunicorn-identity-test",
                "SAAS_ENV": "development",
                "SMTP_URL": inbox.url,
                "RATELIMIT_ENABLED": "true",
            }
            with (
                gunicorn_server(
                    database_url, _redis_url(worker_id_str), tmp, env=env, issuer_host="localhost"
                ) as server,
                (tmp / "worker.stderr").open("wb") as w_err,
            ):
                worker = subprocess.Popen(
                    [sys.executable, "-m", "saas.cli", "worker", "--poll-interval", "0.1"],
                    cwd=ROOT, env=server.env, stdout=subprocess.DEVNULL, stderr=w_err,
                )  # fmt: skip
                try:
                    yield Stack(server.base, inbox, tenants)
                finally:
                    stop(worker)  # by PID: this module's own process
    finally:
        for tenant_id in tenants:
            drop_tenant(engine, tenant_id)


@pytest.fixture(autouse=True)
def _fresh_throttles(redis_client):
    """Each test starts with no throttle state (the limiter stays on)."""
    redis_client.flushdb()


# --- helpers ------------------------------------------------------------------------------------


def _body(message) -> str:
    return message.get_payload(decode=True).decode()


def _mail(inbox: Inbox, to: str, subject: str, where: Callable[[str], bool] = lambda b: True,
          count: int = 1) -> list:  # fmt: skip
    """The first ``count`` mails to ``to`` with ``subject`` whose body passes ``where``, waiting
    for the worker process to deliver them."""
    deadline = time.monotonic() + 20
    while True:
        found = [m for m in inbox.to(to) if m["Subject"] == subject and where(_body(m))]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            got = [(m["To"], m["Subject"]) for m in inbox.messages]
            raise AssertionError(f"no {subject!r} mail to {to}; got {got}")
        time.sleep(0.05)


def _link_token(message, path: str) -> str:
    match = re.search(rf"(http://\S+){re.escape(path)}\?token=(\S+)", _body(message))
    assert match, _body(message)
    return match.group(2)


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _problem(r: requests.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    assert r.json()["code"] == code, r.json()


def _signup(stack: Stack, slug: str, email: str) -> dict:
    body = signup_over_http(stack.base, slug, email)
    stack.tenants.append(body["tenant"]["id"])
    return body


def _verify_from_mail(stack: Stack, email: str) -> str:
    """The owner opens the signup's verification mail; the token (spent) is returned."""
    [mail] = _mail(stack.inbox, email, "Verify your email address")
    token = _link_token(mail, "/account/verify")
    r = requests.post(f"{stack.base}/api/v1/auth/email/verify", json={"token": token}, timeout=10)
    assert r.status_code == 204, r.text
    return token


def _login(stack: Stack, email: str, password: str) -> requests.Response:
    return requests.post(
        f"{stack.base}/api/v1/auth/login", json={"email": email, "password": password}, timeout=10
    )


def _me(stack: Stack, token: str) -> requests.Response:
    return requests.get(f"{stack.base}/api/v1/me", headers=_bearer(token), timeout=10)


# --- 1-3: verification, reset, password and email change --------------------------------------


def test_verify_reset_and_change_password_and_email(stack):
    base, inbox = stack.base, stack.inbox
    slug = f"gi-{uuid.uuid4().hex[:8]}"
    email = f"owner@{slug}.test"
    owner = _signup(stack, slug, email)
    access = owner["token"]["access_token"]
    assert owner["user"]["email_verified"] is False

    # 1. the signup's verification mail, its token posted to the API, and spent
    token = _verify_from_mail(stack, email)
    assert _me(stack, access).json()["user"]["email_verified"] is True
    again = requests.post(f"{base}/api/v1/auth/email/verify", json={"token": token}, timeout=10)
    _problem(again, 400, "invalid_verification_token")

    # 2. forgot: the same answer for an address nobody has
    known = requests.post(f"{base}/api/v1/auth/password/forgot", json={"email": email}, timeout=10)
    nobody = f"nobody@{slug}.test"
    unknown = requests.post(f"{base}/api/v1/auth/password/forgot", json={"email": nobody}, timeout=10)
    assert known.status_code == unknown.status_code == 202, (known.text, unknown.text)
    assert known.json() == unknown.json()
    [reset_mail] = _mail(inbox, email, "Reset your password")
    reset_token = _link_token(reset_mail, "/account/reset")
    r = requests.post(
        f"{base}/api/v1/auth/password/reset",
        json={"token": reset_token, "password": NEW_PASSWORD},
        timeout=10,
    )
    assert r.status_code == 204, r.text
    # every session ended: the signup's access and refresh tokens are dead
    assert _me(stack, access).status_code == 401
    refreshed = requests.post(
        f"{base}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": owner["token"]["refresh_token"]},
        timeout=10,
    )
    assert refreshed.status_code == 400, refreshed.text
    _problem(_login(stack, email, TEST_PASSWORD), 401, "invalid_credentials")
    login = _login(stack, email, NEW_PASSWORD)
    assert login.status_code == 200, login.text
    [notice] = _mail(inbox, email, "Security notice", lambda b: "reset" in b)
    assert "token=" not in _body(notice)
    again = requests.post(
        f"{base}/api/v1/auth/password/reset", json={"token": reset_token, "password": "another one, later"},
        timeout=10,
    )  # fmt: skip
    _problem(again, 400, "invalid_reset_token")
    assert _login(stack, email, NEW_PASSWORD).status_code == 200  # the reused token changed nothing
    assert inbox.to(nobody) == []

    # 3. a password change keeps this session and ends the others
    current = login.json()
    other = _login(stack, email, NEW_PASSWORD).json()
    changed_password = "the third passphrase of this test"
    r = requests.put(
        f"{base}/api/v1/me/password",
        json={"current_password": NEW_PASSWORD, "new_password": changed_password},
        headers=_bearer(current["access_token"]),
        timeout=10,
    )
    assert r.status_code == 204, r.text
    assert _me(stack, current["access_token"]).status_code == 200
    assert _me(stack, other["access_token"]).status_code == 401
    _mail(inbox, email, "Security notice", lambda b: "Your password was changed" in b)

    # ... and an email change: a link to the new address, a notice without one to the old
    new_email = f"moved@{slug}.test"
    r = requests.post(
        f"{base}/api/v1/me/email",
        json={"new_email": new_email, "password": changed_password},
        headers=_bearer(current["access_token"]),
        timeout=10,
    )
    assert r.status_code == 202, r.text
    [link] = _mail(inbox, new_email, "Confirm your new email address")
    [asked] = _mail(inbox, email, "Security notice", lambda b: "move your account" in b)
    assert "token" not in _body(asked) and "http" not in _body(asked)
    assert _me(stack, current["access_token"]).json()["user"]["email"] == email  # not yet
    change_token = _link_token(link, "/account/email")
    r = requests.post(f"{base}/api/v1/auth/email/change", json={"token": change_token}, timeout=10)
    assert r.status_code == 204, r.text
    me = _me(stack, current["access_token"]).json()["user"]
    assert me["email"] == new_email and me["email_verified"] is True
    assert _login(stack, new_email, changed_password).status_code == 200
    _problem(_login(stack, email, changed_password), 401, "invalid_credentials")
    again = requests.post(f"{base}/api/v1/auth/email/change", json={"token": change_token}, timeout=10)
    _problem(again, 400, "invalid_verification_token")


# --- 4 and 6: passkeys, the export and deletion ---------------------------------------------


def test_passkey_then_export_and_delete_the_account(stack):
    base, inbox = stack.base, stack.inbox
    slug = f"gp-{uuid.uuid4().hex[:8]}"
    owner_email, email = f"owner@{slug}.test", f"mel@{slug}.test"
    owner = _signup(stack, slug, owner_email)
    _verify_from_mail(stack, owner_email)  # inviting needs a verified email
    r = requests.post(
        f"{base}/api/v1/members",
        json={"email": email, "role": "member"},
        headers=_bearer(owner["token"]["access_token"]),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    [invitation] = _mail(inbox, email, f"Invitation to {slug}")
    match = re.search(r"Invitation token: (\S+)", _body(invitation))
    assert match, _body(invitation)
    r = requests.post(
        f"{base}/api/v1/invitations/accept",
        json={"token": match.group(1), "password": TEST_PASSWORD},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    member = _login(stack, email, TEST_PASSWORD).json()

    # 4. register a passkey (a fresh login is the step-up), then sign in with it alone
    device = Passkey(uv=True)
    options = requests.post(
        f"{base}/api/v1/me/webauthn/registration/options", headers=_bearer(member["access_token"]), timeout=10
    )
    assert options.status_code == 200, options.text
    assert options.json()["publicKey"]["rp"]["id"] == "localhost"
    r = requests.post(
        f"{base}/api/v1/me/webauthn/registration/verify",
        json={
            "ceremony_id": options.json()["ceremony_id"],
            "credential": device.register(options.json()["publicKey"], origin=base),
            "name": "Soft key",
        },
        headers=_bearer(member["access_token"]),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    credential_id = r.json()["id"]

    def passwordless(origin: str) -> requests.Response:
        options = requests.post(f"{base}/api/v1/auth/webauthn/options", json={}, timeout=10)
        assert options.status_code == 200, options.text
        body = options.json()
        return requests.post(
            f"{base}/api/v1/auth/webauthn/verify",
            json={"ceremony_id": body["ceremony_id"], "credential": device.sign(body["publicKey"], origin)},
            timeout=10,
        )

    _problem(passwordless("https://evil.example"), 401, "webauthn_failed")
    r = passwordless(base)
    assert r.status_code == 200, r.text
    tokens = r.json()
    access = tokens["access_token"]
    claims = pyjwt.decode(
        access, stack.jwks().get_signing_key_from_jwt(access).key, algorithms=ALGORITHMS,
        audience="saas-api", issuer=base,
    )  # fmt: skip
    assert claims["amr"] == ["hwk", "user", "mfa"]  # RFC 8176: a device-bound key, user verified
    me = _me(stack, access).json()["user"]
    assert me["email"] == email and me["id"] == claims["sub"]

    # 6. the export holds the passkey's public parts and no secret
    r = requests.get(f"{base}/api/v1/me/export", headers=_bearer(access), timeout=10)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["user"]["email"] == email
    assert [m["tenant"]["slug"] for m in doc["memberships"]] == [slug]
    passkeys = doc["passkeys"]
    assert [p["id"] for p in passkeys] == [credential_id] and passkeys[0]["name"] == "Soft key"
    for secret in (TEST_PASSWORD, "$argon2", access, tokens["refresh_token"], member["refresh_token"]):
        assert secret not in r.text
    assert owner_email not in r.text

    # deletion needs the password, then the account is gone and its address free again
    def delete(password: str) -> requests.Response:
        return requests.delete(
            f"{base}/api/v1/me", json={"password": password}, headers=_bearer(access), timeout=10
        )

    _problem(delete("not the password"), 403, "invalid_credentials")
    assert _me(stack, access).status_code == 200  # the wrong password changed nothing
    r = delete(TEST_PASSWORD)
    assert r.status_code == 204, r.text
    assert _me(stack, access).status_code == 401
    _mail(inbox, email, "Security notice", lambda b: "deleted" in b)
    _problem(_login(stack, email, TEST_PASSWORD), 401, "invalid_credentials")
    assert passwordless(base).status_code == 401  # the passkey went with the account
    again = _signup(stack, f"{slug}-m", email)
    assert again["user"]["email"] == email and again["user"]["id"] != claims["sub"]


# --- 5: RP-initiated and back-channel logout ----------------------------------------------------


def test_new_device_notice_and_a_tenant_admins_mfa_reset_and_session_end(stack):
    base, inbox = stack.base, stack.inbox
    slug = f"gd-{uuid.uuid4().hex[:8]}"
    owner_email, email = f"owner@{slug}.test", f"dev@{slug}.test"
    owner = _signup(stack, slug, owner_email)
    _verify_from_mail(stack, owner_email)
    admin = _bearer(owner["token"]["access_token"])  # a fresh signup: the step-up holds
    r = requests.post(
        f"{base}/api/v1/members", json={"email": email, "role": "member"}, headers=admin, timeout=10
    )
    assert r.status_code == 201, r.text
    [invitation] = _mail(inbox, email, f"Invitation to {slug}")
    token = re.search(r"Invitation token: (\S+)", _body(invitation)).group(1)
    r = requests.post(
        f"{base}/api/v1/invitations/accept", json={"token": token, "password": TEST_PASSWORD}, timeout=10
    )
    assert r.status_code == 200, r.text
    member_id = r.json()["user"]["id"]

    def login(user_agent: str) -> requests.Response:
        return requests.post(
            f"{base}/api/v1/auth/login",
            json={"email": email, "password": TEST_PASSWORD},
            headers={"User-Agent": user_agent},
            timeout=10,
        )

    # the account's first device is recorded silently; another one is mailed, when and from where
    assert login("Laptop/1.0").status_code == 200
    assert login("Laptop/1.0").status_code == 200
    phone = login("Phone/2.0")
    assert phone.status_code == 200
    [notice] = _mail(inbox, email, "Security notice", lambda b: "new sign-in" in b)
    assert "Phone/2.0" in _body(notice) and "127.0.0.1" in _body(notice) and " UTC" in _body(notice)
    time.sleep(0.5)
    assert len(_mail(inbox, email, "Security notice", lambda b: "new sign-in" in b)) == 1  # not Laptop

    # the member enrols TOTP (a fresh login is the step-up) ...
    member = _bearer(phone.json()["access_token"])
    r = requests.post(f"{base}/api/v1/me/mfa/totp", headers=member, timeout=10)
    assert r.status_code == 201, r.text
    code = pyotp.TOTP(r.json()["secret"]).now()
    r = requests.post(f"{base}/api/v1/me/mfa/totp/confirm", json={"code": code}, headers=member, timeout=10)
    assert r.status_code == 200, r.text
    assert login("Phone/2.0").json()["code"] == "mfa_required"
    # ... loses the device: a member may not reset anyone's MFA; the admin does, with step-up
    _problem(requests.delete(f"{base}/api/v1/members/{member_id}/mfa", headers=member, timeout=10), 403,
             "permission_denied")  # fmt: skip
    r = requests.delete(f"{base}/api/v1/members/{member_id}/mfa", headers=admin, timeout=10)
    assert r.status_code in (200, 204), r.text
    _mail(inbox, email, "Security notice", lambda b: "two-factor authentication was reset" in b)
    assert _me(stack, phone.json()["access_token"]).status_code == 401  # the reset ended the sessions
    fresh = login("Phone/2.0")
    assert fresh.status_code == 200 and "access_token" in fresh.json()  # no second factor asked now

    # the admin ends all of the member's sessions: the refresh token dies, the member is told
    r = requests.delete(f"{base}/api/v1/members/{member_id}/sessions", headers=admin, timeout=10)
    assert r.status_code in (200, 204), r.text
    _mail(inbox, email, "Security notice", lambda b: "ended all your sessions" in b)
    assert _me(stack, fresh.json()["access_token"]).status_code == 401
    r = requests.post(
        f"{base}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": fresh.json()["refresh_token"]},
        timeout=10,
    )
    assert r.status_code == 400, r.text


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def test_hosted_login_end_session_and_the_back_channel_logout_token(stack):
    base = stack.base
    slug = f"gl-{uuid.uuid4().hex[:8]}"
    email = f"owner@{slug}.test"
    owner = _signup(stack, slug, email)
    _verify_from_mail(stack, email)  # registering clients needs a verified email
    receiver = Receiver()
    try:
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
            headers=_bearer(owner["token"]["access_token"]),
            timeout=10,
        )
        assert r.status_code == 201, r.text
        rp = r.json()
        config = requests.get(f"{base}/.well-known/openid-configuration", timeout=10).json()
        assert config["end_session_endpoint"] == f"{base}/oauth/end-session"
        assert config["backchannel_logout_supported"] is True

        # the hosted login, as a browser would (cookies kept by the session)
        browser = requests.Session()
        verifier, challenge = pkce_pair()
        page = browser.get(
            f"{base}/oauth/authorize",
            params={
                "response_type": "code", "client_id": rp["client_id"], "redirect_uri": REDIRECT,
                "scope": "openid email", "state": "st", "nonce": "n-1",
                "code_challenge": challenge, "code_challenge_method": "S256",
            },
            timeout=10,
        )  # fmt: skip
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
                "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                "client_id": rp["client_id"], "redirect_uri": REDIRECT,
            },
            timeout=10,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        tokens = r.json()
        jwks = stack.jwks()
        id_token = tokens["id_token"]
        id_claims = pyjwt.decode(
            id_token, jwks.get_signing_key_from_jwt(id_token).key, algorithms=ALGORITHMS,
            audience=rp["client_id"], issuer=base,
        )  # fmt: skip
        assert id_claims["email_verified"] is True and id_claims["nonce"] == "n-1"

        # an unregistered post-logout URI is not followed
        r = browser.get(
            f"{base}/oauth/end-session",
            params={"id_token_hint": id_token, "post_logout_redirect_uri": "https://evil.example/"},
            allow_redirects=False,
            timeout=10,
        )  # fmt: skip
        assert r.status_code == 400 and "Location" not in r.headers, r.text
        # ... and ends nothing: the session's refresh token still works (rotated)
        refreshed = requests.post(
            f"{base}/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                  "client_id": rp["client_id"]},
            timeout=10,
        )  # fmt: skip
        assert refreshed.status_code == 200, refreshed.text
        refresh_token = refreshed.json()["refresh_token"]
        r = browser.get(
            f"{base}/oauth/end-session",
            params={"id_token_hint": id_token, "post_logout_redirect_uri": AFTER_LOGOUT, "state": "bye"},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 302 and r.headers["Location"] == f"{AFTER_LOGOUT}?state=bye", r.text
        refreshed = requests.post(
            f"{base}/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": rp["client_id"],
            },
            timeout=10,
        )
        assert refreshed.status_code == 400, refreshed.text  # the browser session's family ended

        # the worker process delivers the logout token to the client
        deadline = time.monotonic() + 20
        while not receiver.tokens("/backchannel") and time.monotonic() < deadline:
            time.sleep(0.05)
        (logout_token,) = receiver.tokens("/backchannel")
        claims = pyjwt.decode(
            logout_token, jwks.get_signing_key_from_jwt(logout_token).key, algorithms=ALGORITHMS,
            audience=rp["client_id"], issuer=base,
        )  # fmt: skip
        assert pyjwt.get_unverified_header(logout_token)["typ"] == "logout+jwt"
        assert claims["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
        assert claims["sid"] == id_claims["sid"] and claims["sub"] == id_claims["sub"] == owner["user"]["id"]
        assert "nonce" not in claims
        verify_logout_token(
            logout_token, requests.get(config["jwks_uri"], timeout=10).json(), rp["client_id"], base
        )
    finally:
        receiver.close()


# --- the hosted login page in Chromium, a passkey from its virtual authenticator --------------


@pytest.mark.skipif(not chromium_available(), reason="Debian's chromium and playwright are needed")
def test_chromium_passkey_on_the_hosted_login_page(stack):
    """Debian's Chromium through Playwright, the DevTools protocol's virtual authenticator: a
    passkey registered from the page, then "Sign in with a passkey" on the hosted login page."""
    from playwright.sync_api import sync_playwright

    base = stack.base
    slug = f"gc-{uuid.uuid4().hex[:8]}"
    email = f"owner@{slug}.test"
    owner = _signup(stack, slug, email)
    _verify_from_mail(stack, email)
    r = requests.post(
        f"{base}/api/v1/clients",
        json={"name": "Passkey app", "redirect_uris": [f"{base}/callback"], "client_type": "public",
              "first_party": True},
        headers=_bearer(owner["token"]["access_token"]),
        timeout=10,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    client_id = r.json()["client_id"]
    verifier, challenge = pkce_pair()
    authorize = f"{base}/oauth/authorize?" + urlencode(
        {
            "response_type": "code", "client_id": client_id, "redirect_uri": f"{base}/callback",
            "scope": "openid api", "state": "st-pk", "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )  # fmt: skip
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
                        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
                        "hasUserVerification": True, "isUserVerified": True,
                    }
                },
            )  # fmt: skip
            page.goto(f"{base}/healthz")
            status, created = page.evaluate(REGISTER_IN_PAGE, [owner["token"]["access_token"]])
            assert status == 201, created
            assert created["discoverable"] is True
            page.goto(authorize)
            assert page.url.endswith("/oauth/login")
            with page.expect_request(lambda req: req.url.startswith(f"{base}/callback")) as landed:
                page.click("#passkey")
            callback = landed.value.url
        finally:
            browser.close()
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == ["st-pk"]
    r = requests.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "authorization_code", "code": params["code"][0], "code_verifier": verifier,
            "client_id": client_id, "redirect_uri": f"{base}/callback",
        },
        timeout=10,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    claims = pyjwt.decode(
        access, stack.jwks().get_signing_key_from_jwt(access).key, algorithms=ALGORITHMS,
        audience="saas-api", issuer=base,
    )  # fmt: skip
    assert claims["amr"] == ["hwk", "user", "mfa"] and claims["sub"] == owner["user"]["id"]
