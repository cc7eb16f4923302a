"""Password reset (a mailed single-use link) and password change (signed in): docs/auth.md,
"Password reset and change"."""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from saas.auth import browser_sessions
from saas.auth.models import BrowserSession, RefreshToken
from saas.db import utcnow
from saas.outbox import OutboxMessage
from saas.services import services
from tests.conftest import TEST_PASSWORD
from tests.helpers import assert_problem
from tests.test_mfa import T0, _code, _enroll

NEW_PASSWORD = "a brand new long password"


def mails(db_session, topic: str, to: str | None = None, **match) -> list[dict]:
    """The payloads queued in the outbox for ``topic`` (to ``to``, with ``match``'s values)."""
    db_session.expire_all()
    rows = db_session.scalars(
        select(OutboxMessage).where(OutboxMessage.topic == topic).order_by(OutboxMessage.id)
    )
    out = []
    for row in rows:
        p = row.payload
        if to is not None and p.get("to", "").lower() != to.lower():
            continue
        if all(p.get(k) == v for k, v in match.items()):
            out.append(p)
    return out


def reset_token(client, db_session, email: str) -> str:
    r = client.post("/api/v1/auth/password/forgot", json={"email": email})
    assert r.status_code == 202, r.get_json()
    sent = mails(db_session, "mail.account_link", email, kind="password_reset")
    assert sent, "no reset mail"
    return sent[-1]["token"]


def _refresh(client, refresh_token: str):
    return client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token})


def _audit(client, headers, action: str) -> list[dict]:
    r = client.get(f"/api/v1/audit-events?action={action}", headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


# --- forgot: the same answer either way -----------------------------------------------------------


def _stable_headers(response) -> dict:
    return {k: v for k, v in response.headers.items() if k not in ("X-Request-ID", "Date", "Content-Length")}


def test_forgot_answers_the_same_whether_or_not_the_account_exists(api, client, db_session):
    api.signup("acme")
    known = client.post("/api/v1/auth/password/forgot", json={"email": "OWNER@acme.test"})
    unknown = client.post("/api/v1/auth/password/forgot", json={"email": "nobody@acme.test"})
    assert known.status_code == unknown.status_code == 202
    assert known.get_json() == unknown.get_json()
    assert _stable_headers(known) == _stable_headers(unknown)
    assert "token" not in known.get_data(as_text=True)
    # only the account's mailbox gets a link; nothing is queued for the unknown address
    assert len(mails(db_session, "mail.account_link", "owner@acme.test", kind="password_reset")) == 1
    assert mails(db_session, "mail.account_link", "nobody@acme.test") == []
    assert mails(db_session, "mail.security", "nobody@acme.test") == []


def test_forgot_takes_about_the_same_time_either_way(api, client):
    """Not a benchmark: both branches run the same statements, so the medians of a few tries
    stay within a generous tolerance of each other."""
    api.signup("acme")

    def median(email: str) -> float:
        times = []
        for _ in range(9):
            start = time.perf_counter()
            assert client.post("/api/v1/auth/password/forgot", json={"email": email}).status_code == 202
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    median("owner@acme.test"), median("nobody@acme.test")  # warm both paths
    known, unknown = median("owner@acme.test"), median("nobody@acme.test")
    # generous: the machine may be busy; a branch that mailed synchronously or hashed a password
    # would still stand out (an SMTP round trip, an argon2 hash)
    assert abs(known - unknown) < max(0.1, min(known, unknown)), (known, unknown)


def test_locked_accounts_and_invited_placeholders_get_no_link(api, client, db_session, app):
    from saas.identity.models import User

    owner = api.signup("acme")
    client.post(
        "/api/v1/members", json={"email": "invitee@acme.test", "role": "member"}, headers=api.auth(owner)
    )
    user = db_session.get(User, uuid.UUID(owner["user"]["id"]))
    user.status = "locked"
    db_session.commit()
    for email in ("owner@acme.test", "invitee@acme.test"):
        assert client.post("/api/v1/auth/password/forgot", json={"email": email}).status_code == 202
    assert mails(db_session, "mail.account_link", kind="password_reset") == []


# --- reset ---------------------------------------------------------------------------------------


def test_reset_sets_the_password_ends_every_session_and_mails_a_notice(api, client, db_session, app):
    owner = api.signup("acme")
    h = api.auth(owner)
    second = api.login("owner@acme.test").get_json()
    row = browser_sessions.start(db_session, uuid.UUID(owner["user"]["id"]), utcnow(), ["pwd"])
    db_session.commit()
    token = reset_token(client, db_session, "owner@acme.test")
    r = client.post("/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
    assert r.status_code == 204, r.get_json()
    assert r.get_data() == b""
    # no tokens, every session gone: the refresh tokens are revoked, the access tokens refused
    for refresh in (owner["token"]["refresh_token"], second["refresh_token"]):
        assert _refresh(client, refresh).status_code == 400
    assert_problem(client.get("/api/v1/me", headers=h), 401)
    db_session.expire_all()
    assert db_session.get(BrowserSession, row.id).ended_reason == "password_reset"
    live = db_session.scalars(
        select(RefreshToken).where(
            RefreshToken.user_id == uuid.UUID(owner["user"]["id"]), RefreshToken.revoked_at.is_(None)
        )
    ).all()
    assert live == []
    # the new password works, the old one does not
    assert api.login("owner@acme.test", TEST_PASSWORD).status_code == 401
    fresh = api.login("owner@acme.test", NEW_PASSWORD)
    assert fresh.status_code == 200, fresh.get_json()
    # a notice without any link, and the reset audited
    notices = mails(db_session, "mail.security", "owner@acme.test", event="password_reset")
    assert len(notices) == 1 and "token" not in notices[0]
    events = _audit(client, api.auth(fresh.get_json()), "password.reset")
    assert len(events) == 1 and events[0]["target"]["id"] == owner["user"]["id"]
    assert _audit(client, api.auth(fresh.get_json()), "password.reset_requested")


def test_reset_is_audited_in_every_tenant_of_the_account(api, client, db_session, app):
    from tests.helpers import add_member, token_for

    owner = api.signup("acme")
    beta = api.signup("beta")
    from saas.identity.models import Membership

    db_session.add(
        Membership(
            user_id=uuid.UUID(owner["user"]["id"]),
            tenant_id=uuid.UUID(beta["tenant"]["id"]),
            role="member",
            status="active",
        )
    )
    db_session.commit()
    token = reset_token(client, db_session, "owner@acme.test")
    assert (
        client.post(
            "/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}
        ).status_code
        == 204
    )
    beta_admin = add_member(app, beta["tenant"]["id"], "admin")
    beta_h = {"Authorization": "Bearer " + token_for(app, beta_admin.id, beta["tenant"]["id"], "admin")}
    acme_fresh = api.login("owner@acme.test", NEW_PASSWORD, tenant="acme").get_json()
    for headers in (api.auth(acme_fresh), beta_h):
        events = _audit(client, headers, "password.reset")
        assert [e["target"]["id"] for e in events] == [owner["user"]["id"]]


def test_a_used_token_does_not_work_twice_and_changes_nothing(api, client, db_session):
    api.signup("acme")
    token = reset_token(client, db_session, "owner@acme.test")
    assert (
        client.post(
            "/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}
        ).status_code
        == 204
    )
    again = client.post(
        "/api/v1/auth/password/reset", json={"token": token, "password": "yet another long password"}
    )
    assert_problem(again, 400, "invalid_reset_token")
    assert api.login("owner@acme.test", NEW_PASSWORD).status_code == 200
    assert api.login("owner@acme.test", "yet another long password").status_code == 401


def test_a_newer_link_or_a_password_change_voids_the_older_link(api, client, db_session):
    owner = api.signup("acme")
    first = reset_token(client, db_session, "owner@acme.test")
    second = reset_token(client, db_session, "owner@acme.test")
    assert_problem(
        client.post("/api/v1/auth/password/reset", json={"token": first, "password": NEW_PASSWORD}),
        400,
        "invalid_reset_token",
    )
    # a password change (signed in) voids the live link too
    r = client.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD},
        headers=api.auth(owner),
    )
    assert r.status_code == 204, r.get_json()
    assert_problem(
        client.post(
            "/api/v1/auth/password/reset", json={"token": second, "password": "attacker long password"}
        ),
        400,
        "invalid_reset_token",
    )
    assert api.login("owner@acme.test", NEW_PASSWORD).status_code == 200


def test_an_expired_link_is_refused_and_changes_nothing(api, client, db_session, time_machine):
    api.signup("acme")
    token = reset_token(client, db_session, "owner@acme.test")
    ttl = services(client.application).settings.password_reset_ttl_seconds
    time_machine.move_to(utcnow() + timedelta(seconds=ttl + 1), tick=True)
    assert_problem(
        client.post("/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}),
        400,
        "invalid_reset_token",
    )
    assert api.login("owner@acme.test", TEST_PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("token", "status"),
    [("", 400), ("short", 400), ("x" * 43, 400), ("x" * 513, 422), (12345, 422), (None, 422), (["a"], 422)],
)
def test_garbage_tokens_are_clear_problems(api, client, token, status):
    api.signup("acme")
    r = client.post("/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD})
    body = assert_problem(r, status)
    if status == 400:
        assert body["code"] == "invalid_reset_token"
    assert api.login("owner@acme.test", TEST_PASSWORD).status_code == 200


def test_another_purposes_token_and_a_moved_account_are_refused(api, client, db_session):
    owner = api.signup("acme", verified=False)
    verification = mails(db_session, "mail.account_link", "owner@acme.test", kind="email_verification")
    assert len(verification) == 1
    assert_problem(
        client.post(
            "/api/v1/auth/password/reset", json={"token": verification[0]["token"], "password": NEW_PASSWORD}
        ),
        400,
        "invalid_reset_token",
    )
    # a link mailed to an address the account no longer has stops working
    from saas.identity.models import User

    token = reset_token(client, db_session, "owner@acme.test")
    user = db_session.get(User, uuid.UUID(owner["user"]["id"]))
    user.email = "moved@acme.test"
    db_session.commit()
    assert_problem(
        client.post("/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}),
        400,
        "invalid_reset_token",
    )


def test_the_password_policy_applies_and_a_refused_password_keeps_the_link(api, client, db_session, app):
    from saas.identity.models import Tenant

    owner = api.signup("acme")
    tenant = db_session.get(Tenant, uuid.UUID(owner["tenant"]["id"]))
    tenant.settings = {**(tenant.settings or {}), "password_min_length": 30}
    db_session.commit()
    token = reset_token(client, db_session, "owner@acme.test")
    for weak in ("password", "a fine but short one"):
        r = client.post("/api/v1/auth/password/reset", json={"token": token, "password": weak})
        assert "password" in assert_problem(r, 422)["errors"]
    strong = "a password of thirty or more characters"
    assert (
        client.post("/api/v1/auth/password/reset", json={"token": token, "password": strong}).status_code
        == 204
    )
    assert api.login("owner@acme.test", strong).status_code == 200


@pytest.fixture()
def clock(time_machine):
    time_machine.move_to(T0, tick=False)
    return time_machine


def test_a_reset_does_not_skip_the_second_factor(api, client, db_session, clock):
    owner = api.signup("acme")
    secret, _codes = _enroll(client, api.auth(owner), clock)
    token = reset_token(client, db_session, "owner@acme.test")
    assert (
        client.post(
            "/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}
        ).status_code
        == 204
    )
    r = api.login("owner@acme.test", NEW_PASSWORD)
    problem = assert_problem(r, 403, "mfa_required")
    assert "access_token" not in problem
    clock.shift(30)
    done = client.post(
        "/api/v1/auth/mfa", json={"mfa_token": problem["mfa_token"], "code": _code(secret, clock)}
    )
    assert done.status_code == 200, done.get_json()


# --- change (signed in) --------------------------------------------------------------------------


def test_change_keeps_this_session_and_ends_every_other(api, client, db_session, app):
    owner = api.signup("acme")
    this = api.login("owner@acme.test").get_json()
    other = api.login("owner@acme.test").get_json()
    r = client.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD},
        headers=api.auth(this),
    )
    assert r.status_code == 204, r.get_json()
    assert client.get("/api/v1/me", headers=api.auth(this)).status_code == 200
    assert _refresh(client, this["refresh_token"]).status_code == 200
    assert_problem(client.get("/api/v1/me", headers=api.auth(other)), 401)
    assert _refresh(client, other["refresh_token"]).status_code == 400
    assert _refresh(client, owner["token"]["refresh_token"]).status_code == 400
    assert api.login("owner@acme.test", NEW_PASSWORD).status_code == 200
    assert len(mails(db_session, "mail.security", "owner@acme.test", event="password_changed")) == 1
    events = _audit(client, api.auth(this), "password.changed")
    assert len(events) == 1 and events[0]["actor"]["id"] == owner["user"]["id"]


def test_a_wrong_current_password_is_a_failed_sign_in_and_changes_nothing(api, client, db_session):
    owner = api.signup("acme")
    h = api.auth(owner)
    r = client.put(
        "/api/v1/me/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers=h,
    )
    assert_problem(r, 403, "invalid_credentials")
    assert api.login("owner@acme.test", TEST_PASSWORD).status_code == 200
    failed = _audit(client, h, "auth.login_failed")
    assert [e["data"]["reason"] for e in failed] == ["wrong_current_password"]
    assert mails(db_session, "mail.security", "owner@acme.test") == []


def test_change_checks_the_new_password_and_service_accounts_have_none(api, client):
    owner = api.signup("acme")
    r = client.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": "short"},
        headers=api.auth(owner),
    )
    assert "new_password" in assert_problem(r, 422)["errors"]
    assert_problem(
        client.put("/api/v1/me/password", json={"current_password": "x", "new_password": NEW_PASSWORD}), 401
    )


def test_the_hosted_forgot_page_is_served_without_a_referrer(client):
    page = client.get("/account/forgot")
    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert 'name="email"' in page.get_data(as_text=True)


def test_the_login_page_links_to_forgot_password(api, client):
    from tests.auth_helpers import authorize_params, pkce_pair, register_client

    owner = api.signup("acme")
    app_client = register_client(client, api.auth(owner), first_party=True)
    _verifier, challenge = pkce_pair()
    assert (
        client.get(
            "/oauth/authorize", query_string=authorize_params(app_client["client_id"], challenge)
        ).status_code
        == 302
    )
    page = client.get("/oauth/login").get_data(as_text=True)
    assert 'href="/account/forgot"' in page and "Forgot password?" in page


def test_change_keeps_the_browser_sign_in_of_this_session_only(api, client, db_session):
    """The caller's refresh family came from a hosted sign-in: that sign-in stays, others end."""
    from sqlalchemy import update

    owner = api.signup("acme")
    user_id = uuid.UUID(owner["user"]["id"])
    this = api.login("owner@acme.test").get_json()
    mine = browser_sessions.start(db_session, user_id, utcnow(), ["pwd"])
    other = browser_sessions.start(db_session, user_id, utcnow(), ["pwd"])
    sid = services(client.application).tokens.verify(this["access_token"])["sid"]
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == uuid.UUID(sid))
        .values(browser_session_id=mine.id)
    )
    db_session.commit()
    r = client.put(
        "/api/v1/me/password",
        json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD},
        headers=api.auth(this),
    )
    assert r.status_code == 204, r.get_json()
    db_session.expire_all()
    assert db_session.get(BrowserSession, mine.id).ended_at is None
    assert db_session.get(BrowserSession, other.id).ended_reason == "password_changed"
