"""The refresh-token grant (RFC 6749 section 6): rotation, reuse detection (RFC 9700 section
4.14.2) with a bounded grace, expiry, and the OAuth error format."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from saas.auth.models import RefreshToken
from saas.db import utcnow
from saas.security import token_hash
from tests.helpers import mailed_invitation_token


@pytest.fixture()
def session_tokens(api):
    signup = api.signup("acme")
    return signup, signup["token"]["refresh_token"]


def _refresh(client, token, **extra):
    return client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token, **extra})


def _row(db_session, token) -> RefreshToken:
    db_session.expire_all()
    return db_session.scalars(select(RefreshToken).where(RefreshToken.token_hash == token_hash(token))).one()


def _backdate_use(db_session, token, seconds=60):
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash(token))
        .values(used_at=utcnow() - timedelta(seconds=seconds))
    )
    db_session.commit()


def _assert_oauth_error(r, error):
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert body["error"] == error and body["error_description"]
    assert r.headers["Cache-Control"] == "no-store"
    return body


def test_rotation_issues_a_new_pair(client, session_tokens, db_session):
    _signup, r1 = session_tokens
    r = _refresh(client, r1)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert body["refresh_token"] != r1
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Pragma"] == "no-cache"
    assert (
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"}).status_code
        == 200
    )
    old, new = _row(db_session, r1), _row(db_session, body["refresh_token"])
    assert old.used_at is not None and new.parent_id == old.id and new.family_id == old.family_id
    assert new.family_expires_at == old.family_expires_at
    # the token itself is never stored, only its hash
    assert old.token_hash != r1


def test_old_refresh_token_stops_working_after_the_grace(client, session_tokens, db_session):
    _, r1 = session_tokens
    r2 = _refresh(client, r1).get_json()["refresh_token"]
    _backdate_use(db_session, r1)
    _assert_oauth_error(_refresh(client, r1), "invalid_grant")
    # reuse revoked the whole family: the newest child fails as well
    body = _assert_oauth_error(_refresh(client, r2), "invalid_grant")
    assert "revoked" in body["error_description"]
    assert _row(db_session, r2).revoked_reason == "reuse_detected"


def test_grace_reuse_is_bounded(client, session_tokens, db_session):
    """A retry inside the grace window (a lost response) gets one more child; a third use of the
    same token is reuse and revokes the family."""
    _, r1 = session_tokens
    first = _refresh(client, r1)
    assert first.status_code == 200
    retry = _refresh(client, r1)
    assert retry.status_code == 200
    third = _refresh(client, r1)
    _assert_oauth_error(third, "invalid_grant")
    for child in (first.get_json()["refresh_token"], retry.get_json()["refresh_token"]):
        _assert_oauth_error(_refresh(client, child), "invalid_grant")


def test_reuse_revocation_persists_and_is_audited(client, api, session_tokens, db_session):
    signup, r1 = session_tokens
    _refresh(client, r1)
    _backdate_use(db_session, r1)
    _refresh(client, r1)
    rows = db_session.scalars(
        select(RefreshToken).where(RefreshToken.family_id == _row(db_session, r1).family_id)
    )
    assert all(r.revoked_at is not None for r in rows)
    # the revoked session's access token stops too; a new login reads the log
    old = client.get("/api/v1/audit-events?action=auth.refresh_token_reused", headers=api.auth(signup))
    assert old.status_code == 401 and old.get_json()["code"] == "session_revoked"
    fresh = api.login("owner@acme.test").get_json()
    events = client.get("/api/v1/audit-events?action=auth.refresh_token_reused", headers=api.auth(fresh))
    assert len(events.get_json()) == 1


def test_expired_refresh_token(client, session_tokens, db_session):
    _, r1 = session_tokens
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash(r1))
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.commit()
    body = _assert_oauth_error(_refresh(client, r1), "invalid_grant")
    assert "expired" in body["error_description"]


def test_family_absolute_expiry_caps_children(client, session_tokens, db_session):
    _, r1 = session_tokens
    db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash(r1))
        .values(family_expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.commit()
    _assert_oauth_error(_refresh(client, r1), "invalid_grant")


def test_removed_member_cannot_refresh(client, api, app, db_session):
    from saas.identity.models import Membership

    owner = api.signup("acme")
    r = client.post(
        "/api/v1/members", json={"email": "m@acme.test", "role": "member"}, headers=api.auth(owner)
    )
    assert r.status_code == 201, r.get_json()
    accept = client.post(
        "/api/v1/invitations/accept",
        json={"token": mailed_invitation_token(app, "m@acme.test"), "password": "a long enough password"},
    ).get_json()
    member_refresh = accept["token"]["refresh_token"]
    assert (
        client.delete(f"/api/v1/members/{accept['user']['id']}", headers=api.auth(owner)).status_code == 204
    )
    _assert_oauth_error(_refresh(client, member_refresh), "invalid_grant")
    assert db_session.scalar(select(Membership).where(Membership.user_id == accept["user"]["id"])) is None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "made-up"}, "invalid_grant"),
    ],
)
def test_token_endpoint_errors(client, data, error):
    _assert_oauth_error(client.post("/oauth/token", data=data), error)


def test_token_endpoint_needs_form_encoding(client, session_tokens):
    _, r1 = session_tokens
    r = client.post("/oauth/token", json={"grant_type": "refresh_token", "refresh_token": r1})
    assert r.status_code == 415
    assert r.get_json()["code"] == "unsupported_media_type"


def test_wrong_client_id_is_refused(client, session_tokens):
    """An unknown client fails client authentication (RFC 6749 section 5.2: 401 invalid_client);
    the refresh token stays usable by its own client."""
    _, r1 = session_tokens
    r = _refresh(client, r1, client_id="someone-else")
    assert r.status_code == 401 and r.get_json()["error"] == "invalid_client"
    assert _refresh(client, r1).status_code == 200  # first-party tokens carry no client_id
