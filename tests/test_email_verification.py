"""Verified emails: the signup link, resending, the gate, ``require_verified_email``, the claims,
invitations proving the mailbox, and changing the address: docs/auth.md, "Email verification
and change"."""

from __future__ import annotations

import uuid
from datetime import timedelta

import jwt
import pytest

from saas.db import utcnow
from saas.identity.models import Tenant, User
from saas.services import services
from tests.auth_helpers import REDIRECT, authorize_params, pkce_pair, register_client
from tests.conftest import TEST_PASSWORD
from tests.helpers import assert_problem, role_headers
from tests.test_passwords import _audit, mails, reset_token

NEW_PASSWORD = "a brand new long password"


def _verification_token(db_session, email: str) -> str:
    sent = mails(db_session, "mail.account_link", email, kind="email_verification")
    assert sent, "no verification mail"
    return sent[-1]["token"]


def _me(client, headers) -> dict:
    r = client.get("/api/v1/me", headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["user"]


def test_signup_mails_a_link_that_verifies_the_address(api, client, db_session):
    owner = api.signup("acme", verified=False)
    h = api.auth(owner)
    assert owner["user"]["email_verified"] is False
    assert _me(client, h)["email_verified"] is False
    token = _verification_token(db_session, "owner@acme.test")
    assert client.post("/api/v1/auth/email/verify", json={"token": token}).status_code == 204
    assert _me(client, h)["email_verified"] is True
    assert_problem(
        client.post("/api/v1/auth/email/verify", json={"token": token}), 400, "invalid_verification_token"
    )
    assert [e["action"] for e in _audit(client, h, "email.verified")] == ["email.verified"]
    assert _audit(client, h, "email.verification_sent")


def test_resend_voids_the_previous_link_and_refuses_when_verified(api, client, db_session):
    owner = api.signup("acme", verified=False)
    h = api.auth(owner)
    first = _verification_token(db_session, "owner@acme.test")
    r = client.post("/api/v1/me/email/verification", headers=h)
    assert r.status_code == 202, r.get_json()
    second = _verification_token(db_session, "owner@acme.test")
    assert second != first
    assert_problem(
        client.post("/api/v1/auth/email/verify", json={"token": first}), 400, "invalid_verification_token"
    )
    assert client.post("/api/v1/auth/email/verify", json={"token": second}).status_code == 204
    assert_problem(client.post("/api/v1/me/email/verification", headers=h), 409, "email_already_verified")


def test_expired_garbage_and_other_purposes_tokens_verify_nothing(api, client, db_session, time_machine):
    owner = api.signup("acme", verified=False)
    h = api.auth(owner)
    reset = reset_token(client, db_session, "owner@acme.test")
    assert_problem(
        client.post("/api/v1/auth/email/verify", json={"token": reset}), 400, "invalid_verification_token"
    )
    for garbage in ("", "nope", "x" * 43):
        assert_problem(client.post("/api/v1/auth/email/verify", json={"token": garbage}), 400)
    assert_problem(client.post("/api/v1/auth/email/verify", json={"token": 7}), 422)
    token = _verification_token(db_session, "owner@acme.test")
    ttl = services(client.application).settings.email_verification_ttl_seconds
    time_machine.move_to(utcnow() + timedelta(seconds=ttl + 1), tick=True)
    assert_problem(
        client.post("/api/v1/auth/email/verify", json={"token": token}), 400, "invalid_verification_token"
    )
    user = db_session.get(User, uuid.UUID(owner["user"]["id"]))
    db_session.refresh(user)
    assert user.email_verified_at is None
    assert h  # the account is still unverified


def test_the_gate_refuses_unverified_people(api, client, app, db_session):
    owner = api.signup("acme", verified=False)
    from tests.helpers import give_plan

    give_plan(db_session, owner["tenant"]["id"], "enterprise")
    h = api.auth(owner)
    invite = client.post("/api/v1/members", json={"email": "x@acme.test", "role": "member"}, headers=h)
    assert_problem(invite, 403, "email_unverified")
    assert_problem(
        client.post("/api/v1/clients", json={"name": "App", "redirect_uris": [REDIRECT]}, headers=h),
        403,
        "email_unverified",
    )
    for path, body in (
        ("/api/v1/billing/checkout", {"plan": "pro", "interval": "month"}),
        ("/api/v1/billing/portal", None),
    ):
        assert_problem(client.post(path, json=body, headers=h), 403, "email_unverified")
    # nothing was written: no invitation, no client
    members = client.get("/api/v1/members", headers=h).get_json()
    assert [m["email"] for m in members] == ["owner@acme.test"]
    assert client.get("/api/v1/clients", headers=h).get_json() == []
    # an unverified admin is refused too; a verified one passes
    _u, unverified_admin = role_headers(app, owner["tenant"]["id"], "admin")
    from tests.helpers import add_member, token_for

    stranger = add_member(app, owner["tenant"]["id"], "admin", verified=False)
    sh = {"Authorization": "Bearer " + token_for(app, stranger.id, owner["tenant"]["id"], "admin")}
    assert_problem(
        client.post("/api/v1/members", json={"email": "y@acme.test", "role": "member"}, headers=sh),
        403,
        "email_unverified",
    )
    ok = client.post(
        "/api/v1/members", json={"email": "y@acme.test", "role": "member"}, headers=unverified_admin
    )
    assert ok.status_code == 201, ok.get_json()


def test_the_gate_is_a_reusable_decorator_for_sso_endpoints():
    from saas.auth.context import require_verified_email

    @require_verified_email
    def view():
        return "ok"

    assert view._requires_verified_email is True


def _require_verified(db_session, tenant_id: str) -> None:
    tenant = db_session.get(Tenant, uuid.UUID(tenant_id))
    tenant.settings = {**(tenant.settings or {}), "require_verified_email": True}
    db_session.commit()


def test_require_verified_email_extends_the_gate_to_signing_in(api, client, db_session):
    owner = api.signup("acme", verified=False)
    _require_verified(db_session, owner["tenant"]["id"])
    r = api.login("owner@acme.test")
    problem = assert_problem(r, 403, "email_unverified")
    assert "mfa_token" not in problem and "access_token" not in problem
    # the refresh grant issues nothing either
    r = client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": owner["token"]["refresh_token"]}
    )
    assert r.status_code == 403 and r.get_json()["code"] == "email_unverified"
    # a wrong password still gets the usual 401 (the setting reveals nothing without the password)
    assert_problem(api.login("owner@acme.test", "wrong password here"), 401, "invalid_credentials")
    client.post(
        "/api/v1/auth/email/verify", json={"token": _verification_token(db_session, "owner@acme.test")}
    )
    assert api.login("owner@acme.test").status_code == 200


def test_hosted_sign_in_refuses_an_unverified_member_of_a_tenant_requiring_it(api, client, db_session, app):
    from tests.auth_helpers import csrf_of, query_of

    owner = api.signup("acme")
    app_client = register_client(client, api.auth(owner), first_party=True)
    member = api.signup("beta", verified=False)  # another account, then made a member of acme
    from saas.identity.models import Membership

    db_session.add(
        Membership(
            user_id=uuid.UUID(member["user"]["id"]),
            tenant_id=uuid.UUID(owner["tenant"]["id"]),
            role="member",
            status="active",
        )
    )
    db_session.commit()
    _require_verified(db_session, owner["tenant"]["id"])
    _verifier, challenge = pkce_pair()
    r = client.get("/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge))
    assert r.status_code == 302
    page = client.get("/oauth/login")
    r = client.post(
        "/oauth/login",
        data={
            "email": "owner@beta.test",
            "password": TEST_PASSWORD,
            "csrf_token": csrf_of(page.get_data(as_text=True)),
        },
    )
    assert r.status_code == 302
    assert query_of(r.headers["Location"])["error"] == "access_denied"


def test_email_verified_in_userinfo_and_id_tokens(api, client, db_session, app):
    owner = api.signup("acme", verified=False)
    from saas.auth import service
    from saas.identity.models import Membership

    session = db_session
    user = session.get(User, uuid.UUID(owner["user"]["id"]))
    tenant = session.get(Tenant, uuid.UUID(owner["tenant"]["id"]))
    membership = session.query(Membership).filter_by(user_id=user.id).one()

    def claims():
        with app.test_request_context():
            tokens = service.issue_tokens(
                session,
                user=user,
                membership=membership,
                tenant=tenant,
                scope="openid email api",
                client_id="saas-api",
            )
        session.commit()
        idt = jwt.decode(tokens.id_token, options={"verify_signature": False})
        info = client.get(
            "/oauth/userinfo", headers={"Authorization": f"Bearer {tokens.access_token}"}
        ).get_json()
        return idt, info

    idt, info = claims()
    assert idt["email"] == "owner@acme.test" and idt["email_verified"] is False
    assert info["email_verified"] is False
    client.post(
        "/api/v1/auth/email/verify", json={"token": _verification_token(db_session, "owner@acme.test")}
    )
    session.refresh(user)
    idt, info = claims()
    assert idt["email_verified"] is True and info["email_verified"] is True


def test_accepting_an_invitation_proves_the_mailbox(api, client, db_session):
    owner = api.signup("acme")
    r = client.post(
        "/api/v1/members", json={"email": "new@acme.test", "role": "member"}, headers=api.auth(owner)
    )
    assert r.status_code == 201, r.get_json()
    token = mails(db_session, "mail.invitation", "new@acme.test")[-1]["token"]
    joined = client.post("/api/v1/invitations/accept", json={"token": token, "password": NEW_PASSWORD})
    assert joined.status_code == 200, joined.get_json()
    assert joined.get_json()["user"]["email_verified"] is True


def test_a_password_reset_link_proves_the_mailbox(api, client, db_session):
    api.signup("acme", verified=False)
    token = reset_token(client, db_session, "owner@acme.test")
    assert (
        client.post(
            "/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}
        ).status_code
        == 204
    )
    fresh = api.login("owner@acme.test", NEW_PASSWORD).get_json()
    assert _me(client, api.auth(fresh))["email_verified"] is True


# --- changing the address ------------------------------------------------------------------------


def _change(client, headers, new_email, password=TEST_PASSWORD):
    return client.post(
        "/api/v1/me/email", json={"new_email": new_email, "password": password}, headers=headers
    )


def test_an_email_change_happens_when_the_new_address_confirms_it(api, client, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    r = _change(client, h, "New.Owner@acme.test")
    assert r.status_code == 202, r.get_json()
    assert _me(client, h)["email"] == "owner@acme.test"  # nothing changed yet
    link = mails(db_session, "mail.account_link", "new.owner@acme.test", kind="email_change")
    assert len(link) == 1
    # the old address is told, with no link an attacker could use
    notice = mails(db_session, "mail.security", "owner@acme.test", event="email_change_requested")
    assert len(notice) == 1 and "token" not in notice[0] and "http" not in notice[0].get("details", "")
    assert client.post("/api/v1/auth/email/change", json={"token": link[0]["token"]}).status_code == 204
    me = _me(client, h)
    assert me["email"] == "New.Owner@acme.test" and me["email_verified"] is True
    assert len(mails(db_session, "mail.security", "owner@acme.test", event="email_changed")) == 1
    assert api.login("new.owner@acme.test").status_code == 200
    assert api.login("owner@acme.test").status_code == 401
    assert_problem(
        client.post("/api/v1/auth/email/change", json={"token": link[0]["token"]}),
        400,
        "invalid_verification_token",
    )
    assert [e["action"] for e in _audit(client, h, "email.changed")] == ["email.changed"]
    assert _audit(client, h, "email.change_requested")


def test_an_email_change_voids_the_links_mailed_to_the_old_address(api, client, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    reset = reset_token(client, db_session, "owner@acme.test")
    _change(client, h, "moved@acme.test")
    link = mails(db_session, "mail.account_link", "moved@acme.test", kind="email_change")[-1]["token"]
    assert client.post("/api/v1/auth/email/change", json={"token": link}).status_code == 204
    assert_problem(
        client.post("/api/v1/auth/password/reset", json={"token": reset, "password": NEW_PASSWORD}),
        400,
        "invalid_reset_token",
    )


def test_emails_stay_unique_case_insensitively_at_request_and_at_confirmation(api, client, db_session):
    owner = api.signup("acme")
    api.signup("beta")
    h = api.auth(owner)
    assert_problem(_change(client, h, "OWNER@beta.test"), 409, "email_taken")
    assert "new_email" in assert_problem(_change(client, h, "Owner@Acme.test"), 422)["errors"]
    assert _change(client, h, "later@acme.test").status_code == 202
    link = mails(db_session, "mail.account_link", "later@acme.test", kind="email_change")[-1]["token"]
    api.signup("gamma", email="LATER@acme.test")  # someone takes it before the link is used
    assert_problem(client.post("/api/v1/auth/email/change", json={"token": link}), 409, "email_taken")
    assert _me(client, h)["email"] == "owner@acme.test"


def test_an_email_change_needs_the_password_and_a_password_change_voids_it(api, client, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    assert_problem(_change(client, h, "x@acme.test", password="not the password"), 403, "invalid_credentials")
    assert mails(db_session, "mail.account_link", "x@acme.test") == []
    assert [e["data"]["reason"] for e in _audit(client, h, "auth.login_failed")] == [
        "wrong_password_email_change"
    ]
    assert _change(client, h, "x@acme.test").status_code == 202
    link = mails(db_session, "mail.account_link", "x@acme.test", kind="email_change")[-1]["token"]
    r = client.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD},
        headers=h,
    )
    assert r.status_code == 204
    assert_problem(
        client.post("/api/v1/auth/email/change", json={"token": link}), 400, "invalid_verification_token"
    )


@pytest.mark.parametrize("token", ["", "x" * 43])
def test_bad_change_tokens_are_clear_problems(api, client, token):
    api.signup("acme")
    assert_problem(
        client.post("/api/v1/auth/email/change", json={"token": token}), 400, "invalid_verification_token"
    )
