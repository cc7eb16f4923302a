"""Passkeys through the API (WebAuthn Level 2) with a software authenticator: registration, list,
deletion, passwordless login, the second factor, ``require_mfa``, counters and clone detection,
and the ceremonies' checks (origin, RP id, reuse, another user's credential, another tenant)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from saas.auth import mfa
from saas.auth.models import WebAuthnCredential
from saas.identity.models import User
from saas.services import services
from tests.helpers import assert_problem
from tests.webauthn_device import Passkey, unb64u

REG_OPTIONS = "/api/v1/me/webauthn/registration/options"
REG_VERIFY = "/api/v1/me/webauthn/registration/verify"
CREDENTIALS = "/api/v1/me/webauthn/credentials"
LOGIN_OPTIONS = "/api/v1/auth/webauthn/options"
LOGIN_VERIFY = "/api/v1/auth/webauthn/verify"
MFA_OPTIONS = "/api/v1/auth/mfa/webauthn/options"
MFA_VERIFY = "/api/v1/auth/mfa/webauthn/verify"


def _start_registration(client, headers) -> dict:
    r = client.post(REG_OPTIONS, headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _register(client, headers, device: Passkey, name: str = "Laptop", **kw):
    options = _start_registration(client, headers)
    credential = device.register(options["publicKey"], **kw)
    return client.post(
        REG_VERIFY,
        json={"ceremony_id": options["ceremony_id"], "credential": credential, "name": name},
        headers=headers,
    )


def _registered(api, slug: str, device: Passkey | None = None) -> tuple[dict, Passkey]:
    owner = api.signup(slug)
    device = device or Passkey()
    r = _register(api.client, api.auth(owner), device)
    assert r.status_code == 201, r.get_json()
    return owner, device


def _login_options(client, email: str | None = None) -> dict:
    r = client.post(LOGIN_OPTIONS, json={"email": email} if email else {})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _passwordless(client, device: Passkey, *, email=None, tenant=None, **sign):
    options = _login_options(client, email)
    body = {"ceremony_id": options["ceremony_id"], "credential": device.sign(options["publicKey"], **sign)}
    if tenant:
        body["tenant"] = tenant
    return client.post(LOGIN_VERIFY, json=body)


def _actions(client, headers) -> list[str]:
    r = client.get("/api/v1/audit-events", headers=headers)
    assert r.status_code == 200, r.get_json()
    return [e["action"] for e in r.get_json()]


#: the accounts these tests make (other modules' live servers commit their own for real)
_OURS = ("owner@acme.test", "owner@beta.test", "owner@gamma.test")


def _rows(db_session) -> list[WebAuthnCredential]:
    db_session.expire_all()
    return list(
        db_session.scalars(
            select(WebAuthnCredential)
            .join(User, User.id == WebAuthnCredential.user_id)
            .where(User.email.in_(_OURS))
        )
    )


# --- registration, list, delete ----------------------------------------------------------------


def test_register_list_and_delete(api, client, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    options = _start_registration(client, h)
    pk = options["publicKey"]
    assert pk["rp"] == {"id": "localhost", "name": "SaaS"}
    assert pk["authenticatorSelection"]["residentKey"] == "preferred"
    assert pk["authenticatorSelection"]["userVerification"] == "preferred"
    assert pk["attestation"] == "none" and pk["excludeCredentials"] == []
    device = Passkey(synced=True)
    credential = device.register(pk)
    r = client.post(
        REG_VERIFY,
        json={"ceremony_id": options["ceremony_id"], "credential": credential, "name": "Phone"},
        headers=h,
    )
    assert r.status_code == 201, r.get_json()
    created = r.get_json()
    assert created["name"] == "Phone" and created["aaguid"] == "00000000-0000-0000-0000-000000000000"
    assert created["backup_eligible"] is True and created["backed_up"] is True
    assert created["discoverable"] is True and created["transports"] == ["internal"]
    assert created["last_used_at"] is None and "public_key" not in created
    listed = client.get(CREDENTIALS, headers=h).get_json()
    assert [c["id"] for c in listed] == [created["id"]]
    # the next registration excludes it (section 5.4.3)
    again = _start_registration(client, h)["publicKey"]
    assert [unb64u(c["id"]) for c in again["excludeCredentials"]] == [device.credential_id]
    assert "webauthn.registered" in _actions(client, h)
    r = client.delete(f"{CREDENTIALS}/{created['id']}", headers=h)
    assert r.status_code == 204
    assert client.get(CREDENTIALS, headers=h).get_json() == []
    assert _rows(db_session) == []
    assert "webauthn.deleted" in _actions(client, h)


def test_registration_and_deletion_need_a_person_and_step_up(api, client, db_session, time_machine):
    owner, _device = _registered(api, "acme")
    h = api.auth(owner)
    cid = client.get(CREDENTIALS, headers=h).get_json()[0]["id"]
    assert client.post(REG_OPTIONS).status_code == 401
    # a refreshed token keeps the login's auth_time: 11 minutes on, it is no step-up any more
    time_machine.move_to(time.time() + 660, tick=False)
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": owner["token"]["refresh_token"]}
    )
    assert r.status_code == 200, r.get_json()
    stale = api.auth(r.get_json())
    assert client.get(CREDENTIALS, headers=stale).status_code == 200
    for response in (
        client.post(REG_OPTIONS, headers=stale),
        client.delete(f"{CREDENTIALS}/{cid}", headers=stale),
    ):
        assert response.status_code == 401
        assert response.get_json()["code"] == "insufficient_user_authentication"
    assert len(_rows(db_session)) == 1


def test_delete_needs_step_up_and_own_credential(api, client, db_session, time_machine):
    owner, _device = _registered(api, "acme")
    other = api.signup("beta")
    h = api.auth(owner)
    cid = client.get(CREDENTIALS, headers=h).get_json()[0]["id"]
    # another user's passkey is the same answer as none
    r = client.delete(f"{CREDENTIALS}/{cid}", headers=api.auth(other))
    assert r.status_code == 404 and r.get_json()["code"] == "not_found"
    assert client.delete(f"{CREDENTIALS}/not-a-uuid", headers=h).status_code == 404
    assert len(_rows(db_session)) == 1


def test_duplicate_credential_is_409_and_changes_nothing(api, client, db_session):
    owner, device = _registered(api, "acme")
    r = _register(client, api.auth(owner), device, keep_id=True)
    assert r.status_code == 409 and r.get_json()["code"] == "webauthn_credential_exists"
    # another account cannot take the same credential id either
    other = api.signup("beta")
    r = _register(client, api.auth(other), device, keep_id=True)
    assert r.status_code == 409
    assert len(_rows(db_session)) == 1


def test_registration_reused_ceremony_wrong_origin_wrong_rp(api, client, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    options = _start_registration(client, h)
    credential = Passkey().register(options["publicKey"])
    body = {"ceremony_id": options["ceremony_id"], "credential": credential, "name": "A"}
    assert client.post(REG_VERIFY, json=body, headers=h).status_code == 201
    r = client.post(REG_VERIFY, json=body, headers=h)
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_challenge_invalid"
    # a page on another origin
    options = _start_registration(client, h)
    credential = Passkey().register(options["publicKey"], origin="https://evil.example")
    r = client.post(
        REG_VERIFY, json={**body, "ceremony_id": options["ceremony_id"], "credential": credential}, headers=h
    )
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_registration_failed"
    # a credential scoped to another RP id
    options = _start_registration(client, h)
    pk = {**options["publicKey"], "rp": {"id": "evil.example", "name": "x"}}
    r = client.post(
        REG_VERIFY,
        json={**body, "ceremony_id": options["ceremony_id"], "credential": Passkey().register(pk)},
        headers=h,
    )
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_registration_failed"
    # another user's ceremony
    other = api.signup("beta")
    options = _start_registration(client, api.auth(other))
    r = client.post(
        REG_VERIFY,
        json={
            **body,
            "ceremony_id": options["ceremony_id"],
            "credential": Passkey().register(options["publicKey"]),
        },
        headers=h,
    )
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_challenge_invalid"
    # garbage
    options = _start_registration(client, h)
    r = client.post(
        REG_VERIFY, json={**body, "ceremony_id": options["ceremony_id"], "credential": {"id": 3}}, headers=h
    )
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_registration_failed"
    assert len(_rows(db_session)) == 1


# --- passwordless login -------------------------------------------------------------------------


def test_passwordless_login_with_a_discoverable_passkey(api, client, app, db_session):
    owner, device = _registered(api, "acme", Passkey(uv=True, synced=True))
    options = _login_options(client)
    assert options["publicKey"]["allowCredentials"] == []
    assert options["publicKey"]["rpId"] == "localhost"
    credential = device.sign(options["publicKey"])
    r = client.post(LOGIN_VERIFY, json={"ceremony_id": options["ceremony_id"], "credential": credential})
    assert r.status_code == 200, r.get_json()
    tokens = r.get_json()
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    claims = services(app).tokens.verify(tokens["access_token"])
    assert claims["amr"] == ["swk", "user", "mfa"] and claims["acr"] == "urn:saas:acr:mfa"
    me = client.get("/api/v1/me", headers=api.auth(tokens))
    assert me.status_code == 200
    row = _rows(db_session)[0]
    assert row.sign_count == 1 and row.last_used_at is not None
    assert "auth.login" in _actions(client, api.auth(owner))
    # the ceremony is single use
    r = client.post(LOGIN_VERIFY, json={"ceremony_id": options["ceremony_id"], "credential": credential})
    assert r.status_code == 400 and r.get_json()["code"] == "webauthn_challenge_invalid"
    # and the refresh token works (the session's amr counts as MFA)
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert r.status_code == 200, r.get_json()


def test_device_bound_passkey_is_hwk(api, client, app):
    _owner, device = _registered(api, "acme", Passkey(uv=True, synced=False))
    r = _passwordless(client, device)
    assert services(app).tokens.verify(r.get_json()["access_token"])["amr"] == ["hwk", "user", "mfa"]


def test_passwordless_options_never_tell_which_accounts_have_passkeys(api, client):
    """The options answer is the same for an account with a passkey, one without, and an email
    that names nobody: no credential ids, no transports (the shape would tell them apart)."""
    _owner, device = _registered(api, "acme")
    api.signup("beta")
    for email in ("owner@acme.test", "owner@beta.test", "nobody@acme.test", None):
        public_key = _login_options(client, email)["publicKey"]
        assert public_key["allowCredentials"] == [], email
        assert set(public_key) == {"challenge", "timeout", "rpId", "allowCredentials", "userVerification"}
    # the named account still signs in with its discoverable passkey; an unknown email's ceremony
    # admits nobody's
    assert _passwordless(client, device, email="owner@acme.test").status_code == 200
    assert _passwordless(client, device, email="nobody@acme.test").status_code == 401


def test_another_users_credential_does_not_sign_in_as_the_named_account(api, client):
    _a, device_a = _registered(api, "acme")
    _registered(api, "beta")
    r = _passwordless(client, device_a, email="owner@beta.test")
    assert r.status_code == 401 and r.get_json()["code"] == "webauthn_failed"
    assert "access_token" not in r.get_json()


def test_wrong_origin_wrong_rp_and_user_handle_fail_and_change_nothing(api, client, db_session):
    owner, device = _registered(api, "acme")
    for sign in ({"origin": "https://evil.example"}, {"rp_id": "evil.example"}):
        r = _passwordless(client, device, **sign)
        assert r.status_code == 401 and r.get_json()["code"] == "webauthn_failed", sign
    options = _login_options(client)
    credential = device.sign(options["publicKey"])
    credential["response"]["userHandle"] = "AAAAAAAAAAAAAAAAAAAAAA"
    r = client.post(LOGIN_VERIFY, json={"ceremony_id": options["ceremony_id"], "credential": credential})
    assert r.status_code == 401
    row = _rows(db_session)[0]
    assert row.sign_count == 0 and row.last_used_at is None and row.disabled_at is None
    assert _actions(client, api.auth(owner)).count("auth.login_failed") == 3
    # an unknown credential, and garbage
    r = _passwordless(client, _stranger())
    assert r.status_code == 401
    options = _login_options(client)
    r = client.post(LOGIN_VERIFY, json={"ceremony_id": options["ceremony_id"], "credential": {"rawId": "!!"}})
    assert r.status_code == 401 and r.get_json()["code"] == "webauthn_failed"


def _stranger() -> Passkey:
    """A passkey registered nowhere."""
    device = Passkey()
    device.cred_init("localhost", b"\x01" * 16)
    return device


def test_clone_detection_refuses_and_disables_the_credential(api, client, db_session):
    owner, device = _registered(api, "acme")
    assert _passwordless(client, device).status_code == 200
    assert _passwordless(client, device).status_code == 200  # counter 2
    # a clone replays an older counter (section 6.1.1)
    r = _passwordless(client, device, counter=1)
    assert r.status_code == 401 and r.get_json()["code"] == "webauthn_failed"
    assert "cloned" in r.get_json()["detail"]
    row = _rows(db_session)[0]
    assert row.disabled_at is not None and row.sign_count == 2
    assert "webauthn.clone_detected" in _actions(client, api.auth(owner))
    # the genuine authenticator is refused too from now on
    r = _passwordless(client, device)
    assert r.status_code == 401
    listed = client.get(CREDENTIALS, headers=api.auth(owner)).get_json()
    assert listed[0]["disabled"] is True


def test_a_zero_counter_authenticator_is_not_a_clone(api, client):
    """Authenticators without a counter always send 0 (section 6.1.1): not a clone."""
    _owner, device = _registered(api, "acme")
    assert _passwordless(client, device, counter=0).status_code == 200
    assert _passwordless(client, device, counter=0).status_code == 200


def test_cross_tenant_login_is_refused(api, client):
    _registered(api, "acme")
    api.signup("beta")
    _owner, device = _registered(api, "gamma")
    r = _passwordless(client, device, tenant="beta")
    assert r.status_code == 403 and r.get_json()["code"] == "not_a_member"


# --- without user verification; the second factor; require_mfa ----------------------------------


def _enable_require_mfa(client, headers):
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=headers)
    assert r.status_code == 200, r.get_json()


def test_without_uv_a_passkey_is_one_factor(api, client, app):
    owner, device = _registered(api, "acme", Passkey(uv=False))
    r = _passwordless(client, device)
    assert r.status_code == 200
    claims = services(app).tokens.verify(r.get_json()["access_token"])
    assert claims["amr"] == ["hwk", "user"] and claims["acr"] == "urn:saas:acr:pwd"
    _enable_require_mfa(client, api.auth(owner))
    # the tenant requires MFA: the same passkey cannot be both factors
    r = _passwordless(client, device)
    assert r.status_code == 403 and r.get_json()["code"] == "mfa_enrollment_required"
    token = r.get_json()["mfa_token"]
    options = client.post(MFA_OPTIONS, json={"mfa_token": token})
    assert options.status_code == 401 and options.get_json()["code"] == "invalid_mfa_token"


def test_require_mfa_accepts_a_user_verified_passkey(api, client, app):
    owner, device = _registered(api, "acme", Passkey(uv=True))
    h = api.auth(owner)
    _enable_require_mfa(client, h)
    r = _passwordless(client, device)
    assert r.status_code == 200, r.get_json()
    assert client.get("/api/v1/me", headers=api.auth(r.get_json())).status_code == 200
    # a password alone asks for the second factor, and the passkey can be it
    login = api.login("owner@acme.test")
    assert login.status_code == 403 and login.get_json()["code"] == "mfa_required"
    token = login.get_json()["mfa_token"]
    options = client.post(MFA_OPTIONS, json={"mfa_token": token}).get_json()
    assert [unb64u(c["id"]) for c in options["publicKey"]["allowCredentials"]] == [device.credential_id]
    r = client.post(
        MFA_VERIFY,
        json={
            "mfa_token": token,
            "ceremony_id": options["ceremony_id"],
            "credential": device.sign(options["publicKey"]),
        },
    )
    assert r.status_code == 200, r.get_json()
    claims = services(app).tokens.verify(r.get_json()["access_token"])
    assert claims["amr"] == ["pwd", "hwk", "user", "mfa"] and claims["acr"] == "urn:saas:acr:mfa"
    assert client.get("/api/v1/me", headers=api.auth(r.get_json())).status_code == 200


@pytest.fixture()
def clock(time_machine):
    time_machine.move_to(1_900_000_000, tick=False)
    return time_machine


def test_passkey_as_second_factor_after_totp_login(api, client, app, clock):
    owner = api.signup("acme")
    h = api.auth(owner)
    device = Passkey(uv=False)
    assert _register(client, h, device).status_code == 201
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    code = mfa.totp_at(secret, int(time.time() // 30))
    assert client.post("/api/v1/me/mfa/totp/confirm", json={"code": code}, headers=h).status_code == 200
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    options = client.post(MFA_OPTIONS, json={"mfa_token": token}).get_json()
    # a ceremony of another login (another user) is refused
    other = api.signup("beta")
    other_device = Passkey()
    assert _register(client, api.auth(other), other_device).status_code == 201
    r = client.post(
        MFA_VERIFY,
        json={
            "mfa_token": token,
            "ceremony_id": options["ceremony_id"],
            "credential": other_device.sign(options["publicKey"]),
        },
    )
    assert r.status_code == 401 and r.get_json()["code"] == "webauthn_failed"
    # the ceremony was used up by that attempt; a new one with the right passkey works
    options = client.post(MFA_OPTIONS, json={"mfa_token": token}).get_json()
    body = {
        "mfa_token": token,
        "ceremony_id": options["ceremony_id"],
        "credential": device.sign(options["publicKey"]),
    }
    r = client.post(MFA_VERIFY, json=body)
    assert r.status_code == 200, r.get_json()
    claims = services(app).tokens.verify(r.get_json()["access_token"])
    assert claims["amr"] == ["pwd", "hwk", "user", "mfa"]
    # step-up accepts it: registering another passkey needs a login with the second factor
    assert client.post(REG_OPTIONS, headers=api.auth(r.get_json())).status_code == 200
    # a password-only token of this TOTP user is not enough for step-up... (no such token exists:
    # the password login stopped at mfa_required) and the mfa_token is used up
    options = client.post(MFA_OPTIONS, json={"mfa_token": token})
    assert options.status_code == 401 and options.get_json()["code"] == "invalid_mfa_token"


def test_passwordless_without_uv_then_totp(api, client, app, clock):
    owner = api.signup("acme")
    h = api.auth(owner)
    device = Passkey(uv=False)
    assert _register(client, h, device).status_code == 201
    secret = client.post("/api/v1/me/mfa/totp", headers=h).get_json()["secret"]
    code = mfa.totp_at(secret, int(time.time() // 30))
    assert client.post("/api/v1/me/mfa/totp/confirm", json={"code": code}, headers=h).status_code == 200
    r = _passwordless(client, device)
    assert r.status_code == 403 and r.get_json()["code"] == "mfa_required"
    token = r.get_json()["mfa_token"]
    # the same passkey is not a second factor
    options = client.post(MFA_OPTIONS, json={"mfa_token": token}).get_json()
    r = client.post(
        MFA_VERIFY,
        json={
            "mfa_token": token,
            "ceremony_id": options["ceremony_id"],
            "credential": device.sign(options["publicKey"]),
        },
    )
    assert r.status_code == 401 and r.get_json()["code"] == "webauthn_failed"
    r = client.post(
        "/api/v1/auth/mfa", json={"mfa_token": token, "code": mfa.totp_at(secret, int(time.time() // 30) + 1)}
    )
    assert r.status_code == 200, r.get_json()
    assert services(app).tokens.verify(r.get_json()["access_token"])["amr"] == ["hwk", "user", "otp"]


def test_an_unverified_account_binds_no_factor(api, client, db_session):
    """The pre-registered account: someone signs up with another person's address, binds a
    passkey or TOTP, and waits for the real owner to reset the password. No factor binds before
    the mailbox is proven, so the reset leaves the attacker nothing to sign in with."""
    from tests.test_passwords import reset_token

    attacker = api.signup("acme", email="victim@acme.test", verified=False)
    h = api.auth(attacker)
    assert_problem(client.post(REG_OPTIONS, headers=h), 403, "email_unverified")
    assert_problem(client.post("/api/v1/me/mfa/totp", headers=h), 403, "email_unverified")
    user_id = attacker["user"]["id"]
    assert db_session.scalars(select(WebAuthnCredential)).all() == []
    assert not mfa.has_mfa(db_session, user_id)
    token = reset_token(client, db_session, "victim@acme.test")
    r = client.post(
        "/api/v1/auth/password/reset", json={"token": token, "password": "the owner's own passphrase"}
    )
    assert r.status_code == 204  # the reset link proved the mailbox: the owner may bind factors now
    owner = api.login("victim@acme.test", "the owner's own passphrase").get_json()
    assert _register(client, api.auth(owner), Passkey(uv=True)).status_code == 201
