"""TOTP MFA: RFC 6238 test vectors, enrolment, login with a second factor, replay, drift,
lockout, recovery codes, tenant ``require_mfa``, step-up (RFC 9470)."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import pytest

from saas.auth import mfa
from saas.services import services
from tests.conftest import TEST_PASSWORD
from tests.helpers import mailed_invitation_token, replace_services

T0 = 1_900_000_020.0  # a fixed TOTP clock, in the middle of a 30 s step


# --- RFC 6238 Appendix B -------------------------------------------------------------------------

SEEDS = {
    "sha1": (b"12345678901234567890", hashlib.sha1),
    "sha256": (b"12345678901234567890123456789012", hashlib.sha256),
    "sha512": (b"1234567890123456789012345678901234567890123456789012345678901234", hashlib.sha512),
}
VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("unix_time", "sha1", "sha256", "sha512"), VECTORS)
def test_rfc6238_appendix_b_vectors(unix_time, sha1, sha256, sha512):
    for name, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        seed, digest = SEEDS[name]
        secret = base64.b32encode(seed).decode()
        assert mfa.totp_at(secret, unix_time // 30, digits=8, digest=digest) == expected


def test_match_step_drift_and_replay():
    secret = base64.b32encode(b"12345678901234567890").decode()
    step = int(T0 // 30)
    for offset in (-1, 0, 1):
        assert mfa.match_step(secret, mfa.totp_at(secret, step + offset), None, now=T0) == step + offset
    assert mfa.match_step(secret, mfa.totp_at(secret, step + 2), None, now=T0) is None
    assert mfa.match_step(secret, mfa.totp_at(secret, step - 2), None, now=T0) is None
    # replay: a step at or before the last accepted one is refused
    assert mfa.match_step(secret, mfa.totp_at(secret, step), step, now=T0) is None
    assert mfa.match_step(secret, mfa.totp_at(secret, step - 1), step, now=T0) is None
    assert mfa.match_step(secret, "12345", None, now=T0) is None
    assert mfa.match_step(secret, "abcdef", None, now=T0) is None


# --- API -----------------------------------------------------------------------------------------


@pytest.fixture()
def clock(time_machine):
    """The process's clock frozen at T0 (TOTP steps, tokens, expiries): ``clock.shift(s)``."""
    time_machine.move_to(T0, tick=False)
    return time_machine


def _code(secret: str, clock, offset: int = 0) -> str:
    return mfa.totp_at(secret, int(time.time() // 30) + offset)


def _enroll(client, headers, clock) -> tuple[str, list[str]]:
    started = client.post("/api/v1/me/mfa/totp", headers=headers)
    assert started.status_code == 201, started.get_json()
    body = started.get_json()
    assert body["otpauth_uri"].startswith("otpauth://totp/")
    assert body["qr_code"].startswith("data:image/svg+xml")
    secret = body["secret"]
    wrong = client.post("/api/v1/me/mfa/totp/confirm", json={"code": "000000"}, headers=headers)
    assert wrong.status_code == 401
    confirmed = client.post(
        "/api/v1/me/mfa/totp/confirm", json={"code": _code(secret, clock)}, headers=headers
    )
    assert confirmed.status_code == 200, confirmed.get_json()
    codes = confirmed.get_json()["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    return secret, codes


def _audit_actions(client, headers) -> list[str]:
    r = client.get("/api/v1/audit-events", headers=headers)
    assert r.status_code == 200, r.get_json()
    return [e["action"] for e in r.get_json()]


def test_enroll_then_login_needs_second_factor(api, client, clock, app):
    owner = api.signup("acme")
    h = api.auth(owner)
    secret, _codes = _enroll(client, h, clock)
    again = client.post("/api/v1/me/mfa/totp", headers=h)
    assert again.status_code == 409
    first = api.login("owner@acme.test")
    assert first.status_code == 403
    problem = first.get_json()
    assert problem["code"] == "mfa_required" and problem["mfa_token"]
    assert "access_token" not in problem
    # the confirmation code (this step) was used: the next step's code is accepted (drift +1)
    r = client.post(
        "/api/v1/auth/mfa", json={"mfa_token": problem["mfa_token"], "code": _code(secret, clock, 1)}
    )
    assert r.status_code == 200, r.get_json()
    claims = services(app).tokens.verify(r.get_json()["access_token"])
    assert claims["amr"] == ["pwd", "otp"] and claims["acr"] == "urn:saas:acr:mfa"
    # the mfa_token is single-use
    r = client.post(
        "/api/v1/auth/mfa", json={"mfa_token": problem["mfa_token"], "code": _code(secret, clock, 1)}
    )
    assert r.status_code == 401 and r.get_json()["code"] == "invalid_mfa_token"
    actions = _audit_actions(client, h)
    assert "mfa.enrolled" in actions and "mfa.failed" in actions


def test_totp_replay_rejected_inside_window(api, client, clock):
    owner = api.signup("acme")
    secret, _ = _enroll(client, api.auth(owner), clock)
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    code = _code(secret, clock, 1)
    assert client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": code}).status_code == 200
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    replay = client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": code})
    assert replay.status_code == 401 and replay.get_json()["code"] == "mfa_invalid_code"
    # an older code in the drift window is refused too (the step must move forward)
    clock.shift(30)
    older = client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": _code(secret, clock, -1)})
    assert older.status_code == 401


def test_lockout_after_five_failures_is_persisted_and_audited(api, client, clock, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    secret, _ = _enroll(client, h, clock)
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    statuses = [
        client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": "000000"}).status_code
        for _ in range(5)
    ]
    assert statuses == [401, 401, 401, 401, 403]
    locked = client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": _code(secret, clock, 1)})
    assert locked.status_code == 403 and locked.get_json()["code"] == "mfa_locked"
    assert int(locked.headers["Retry-After"]) > 0
    actions = _audit_actions(client, h)
    assert actions.count("mfa.failed") >= 4 and "mfa.locked" in actions


def test_recovery_codes_single_use_and_regeneration(api, client, clock, app):
    owner = api.signup("acme")
    h = api.auth(owner)
    _secret, codes = _enroll(client, h, clock)
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    r = client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": codes[0].upper()})
    assert r.status_code == 200, r.get_json()
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    r = client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": codes[0]})
    assert r.status_code == 401
    fresh = client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": codes[1]}).get_json()
    new = client.post("/api/v1/me/mfa/recovery-codes", headers=api.auth(fresh["access_token"]))
    assert new.status_code == 200
    new_codes = new.get_json()["recovery_codes"]
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    assert client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": codes[2]}).status_code == 401
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    assert client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": new_codes[0]}).status_code == 200


def test_disable_needs_password_code_and_step_up(api, client, clock):
    owner = api.signup("acme")
    h = api.auth(owner)
    secret, _ = _enroll(client, h, clock)
    # the signup token has amr pwd only: a user with MFA must step up
    r = client.delete(
        "/api/v1/me/mfa/totp", json={"password": TEST_PASSWORD, "code": _code(secret, clock, 1)}, headers=h
    )
    assert r.status_code == 401 and r.get_json()["code"] == "insufficient_user_authentication"
    assert 'error="insufficient_user_authentication"' in r.headers["WWW-Authenticate"]
    token = api.login("owner@acme.test").get_json()["mfa_token"]
    strong = client.post(
        "/api/v1/auth/mfa", json={"mfa_token": token, "code": _code(secret, clock, 1)}
    ).get_json()
    hs = api.auth(strong["access_token"])
    clock.shift(30)
    wrong_pw = client.delete(
        "/api/v1/me/mfa/totp",
        json={"password": "not the password", "code": _code(secret, clock, 1)},
        headers=hs,
    )
    assert wrong_pw.status_code == 401
    ok = client.delete(
        "/api/v1/me/mfa/totp", json={"password": TEST_PASSWORD, "code": _code(secret, clock, 1)}, headers=hs
    )
    assert ok.status_code == 204, ok.get_json()
    assert api.login("owner@acme.test").status_code == 200
    assert "mfa.disabled" in _audit_actions(client, hs)


def test_tenant_require_mfa_forces_enrollment_before_tokens(api, client, clock, app):
    owner = api.signup("acme")
    h = api.auth(owner)
    r = client.patch("/api/v1/tenant", json={"settings": {"require_mfa": True}}, headers=h)
    assert r.status_code == 200, r.get_json()
    login = api.login("owner@acme.test")
    assert login.status_code == 403
    problem = login.get_json()
    assert problem["code"] == "mfa_enrollment_required" and "access_token" not in problem
    token = problem["mfa_token"]
    # the enrolment token cannot complete a login, nor reach other endpoints
    assert client.post("/api/v1/auth/mfa", json={"mfa_token": token, "code": "123456"}).status_code == 401
    started = client.post("/api/v1/me/mfa/totp", json={"mfa_token": token})
    assert started.status_code == 201, started.get_json()
    secret = started.get_json()["secret"]
    done = client.post("/api/v1/me/mfa/totp/confirm", json={"mfa_token": token, "code": _code(secret, clock)})
    assert done.status_code == 200, done.get_json()
    body = done.get_json()
    assert len(body["recovery_codes"]) == 10
    claims = services(app).tokens.verify(body["token"]["access_token"])
    assert claims["amr"] == ["pwd", "otp"]
    # used up
    assert client.post("/api/v1/me/mfa/totp", json={"mfa_token": token}).status_code == 401


def test_step_up_requires_recent_auth_time(api, client, app):
    owner = api.signup("acme")
    h = api.auth(owner)
    created = client.post(
        "/api/v1/clients", json={"name": "svc", "redirect_uris": ["https://a.example/cb"]}, headers=h
    ).get_json()
    tokens = services(app).tokens
    stale = tokens.issue(
        subject=owner["user"]["id"],
        tenant_id=owner["tenant"]["id"],
        roles=["owner"],
        scope="api",
        client_id="saas-api",
        auth_time=int(time.time()) - 3600,
        amr=["pwd"],
    ).token
    r = client.post(f"/api/v1/clients/{created['client_id']}/secret", headers=api.auth(stale))
    assert r.status_code == 401
    assert r.get_json()["code"] == "insufficient_user_authentication"
    assert "max_age=600" in r.headers["WWW-Authenticate"]
    assert client.post(f"/api/v1/clients/{created['client_id']}/secret", headers=h).status_code == 200


def test_mfa_secret_is_encrypted_at_rest(api, client, clock, db_session):
    from sqlalchemy import select

    from saas.auth.models import MfaFactor, RecoveryCode

    owner = api.signup("acme")
    secret, codes = _enroll(client, api.auth(owner), clock)
    user_id = uuid.UUID(owner["user"]["id"])
    factor = db_session.scalars(select(MfaFactor).where(MfaFactor.user_id == user_id)).one()
    assert secret not in factor.secret_encrypted
    stored = set(db_session.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.user_id == user_id)))
    assert len(stored) == 10
    assert not (stored & set(codes))


def test_step_up_on_member_removal_and_admin_grant(api, client, app):
    owner = api.signup("acme")
    h = api.auth(owner)
    invite = client.post("/api/v1/members", json={"email": "ada@acme.test", "role": "member"}, headers=h)
    assert invite.status_code == 201, invite.get_json()
    joined = client.post(
        "/api/v1/invitations/accept",
        json={"token": mailed_invitation_token(app, "ada@acme.test"), "password": "another good passphrase"},
    ).get_json()
    member_id = joined["user"]["id"]
    stale = (
        services(app)
        .tokens.issue(
            subject=owner["user"]["id"],
            tenant_id=owner["tenant"]["id"],
            roles=["owner"],
            scope="api",
            client_id="saas-api",
            auth_time=int(time.time()) - 3600,
            amr=["pwd"],
        )
        .token
    )
    hs = api.auth(stale)
    r = client.patch(f"/api/v1/members/{member_id}", json={"role": "admin"}, headers=hs)
    assert r.status_code == 401 and r.get_json()["code"] == "insufficient_user_authentication"
    # demotions and viewer changes need no step-up
    assert (
        client.patch(f"/api/v1/members/{member_id}", json={"role": "viewer"}, headers=hs).status_code == 200
    )
    assert client.delete(f"/api/v1/members/{member_id}", headers=hs).status_code == 401
    assert client.patch(f"/api/v1/members/{member_id}", json={"role": "admin"}, headers=h).status_code == 200
    # an admin cannot mint an owner-role service client
    admin = api.login("ada@acme.test", password="another good passphrase").get_json()
    r = client.post(
        "/api/v1/clients",
        json={
            "name": "svc",
            "client_type": "confidential",
            "grant_types": ["client_credentials"],
            "role": "owner",
        },
        headers=api.auth(admin),
    )
    assert r.status_code == 403 and r.get_json()["code"] == "role_not_assignable"
    assert client.delete(f"/api/v1/members/{member_id}", headers=h).status_code == 204


def test_mfa_token_store_down_is_503(api, client, clock, app, monkeypatch):
    import redis as redis_lib

    owner = api.signup("acme")
    _enroll(client, api.auth(owner), clock)
    broken = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    replace_services(monkeypatch, app, redis=broken)
    r = api.login("owner@acme.test")
    assert r.status_code == 503 and r.get_json()["code"] == "mfa_unavailable"


def test_operator_reset_mfa(api, client, clock, app, db_session):
    from saas.audit import Actor
    from saas.identity.models import User

    owner = api.signup("acme")
    _enroll(client, api.auth(owner), clock)
    user = db_session.get(User, uuid.UUID(owner["user"]["id"]))
    with app.test_request_context():
        assert mfa.reset(
            db_session, user, f"t_{owner['tenant']['id'].replace('-', '')}", Actor("operator", "ops")
        )
    db_session.flush()
    assert api.login("owner@acme.test").status_code == 200
    actions = [e["action"] for e in client.get("/api/v1/audit-events", headers=api.auth(owner)).get_json()]
    assert "mfa.reset" in actions


def test_invitation_accept_does_not_bypass_mfa(api, client, clock):
    acme = api.signup("acme")
    _enroll(client, api.auth(acme), clock)
    globex = api.signup("globex")
    invite = client.post(
        "/api/v1/members", json={"email": "owner@acme.test", "role": "member"}, headers=api.auth(globex)
    )
    assert invite.status_code == 201, invite.get_json()
    # an existing account accepts signed in (its own acme token), without a password
    accepted = client.post(
        "/api/v1/invitations/accept",
        json={"token": mailed_invitation_token(client.application, "owner@acme.test")},
        headers=api.auth(acme),
    )
    assert accepted.status_code == 200, accepted.get_json()
    assert "token" not in accepted.get_json()
    assert api.login("owner@acme.test", tenant="globex").get_json()["code"] == "mfa_required"
