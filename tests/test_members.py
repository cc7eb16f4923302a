"""Members and invitations: invite, accept (new and existing users), expiry and single use,
role changes within the actor's reach, removal, and the last-owner rule."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from saas.db import utcnow
from saas.identity.models import Invitation, Membership
from saas.outbox import OutboxMessage
from tests.conftest import TEST_PASSWORD
from tests.helpers import assert_problem, mailed_invitation_token, role_headers

NEW_PASSWORD = "a long enough password"


@pytest.fixture()
def owner(api):
    return api.signup("acme")


def _invite(client, headers, email="new@acme.test", role="member"):
    return client.post("/api/v1/members", json={"email": email, "role": role}, headers=headers)


def _accept(client, token, **body):
    return client.post("/api/v1/invitations/accept", json={"token": token, **body})


def test_invite_new_user_who_sets_a_password(api, client, owner, db_session):
    r = _invite(client, api.auth(owner))
    assert r.status_code == 201, r.get_json()
    invited = r.get_json()
    assert invited["status"] == "invited" and invited["role"] == "member" and invited["invitation_id"]
    assert "invitation_token" not in invited  # the token goes only to the invitee's mailbox
    token = mailed_invitation_token(client.application, "new@acme.test")
    # only a hash is stored; the mail goes through the outbox
    inv = db_session.scalars(select(Invitation)).one()
    assert inv.token_hash != token and token not in inv.token_hash
    mail = db_session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "mail.invitation")).one()
    assert mail.payload["to"] == "new@acme.test" and mail.payload["tenant"] == "acme"
    # the listing shows the pending member without the token
    listing = client.get("/api/v1/members", headers=api.auth(owner))
    assert token not in listing.get_data(as_text=True)
    assert {m["email"]: m["status"] for m in listing.get_json()} == {
        "owner@acme.test": "active",
        "new@acme.test": "invited",
    }
    # a new account needs a (good) password
    assert "password" in assert_problem(_accept(client, token), 422)["errors"]
    assert "password" in assert_problem(_accept(client, token, password="short"), 422)["errors"]
    r = _accept(client, token, password=NEW_PASSWORD, name="Linus")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (
        body["user"]["name"] == "Linus" and body["tenant"]["slug"] == "acme" and body["token"]["access_token"]
    )
    assert api.login("new@acme.test", password=NEW_PASSWORD).status_code == 200
    me = client.get("/api/v1/me", headers=api.auth(body["token"]["access_token"])).get_json()
    assert me["role"] == "member"
    # single use
    assert_problem(_accept(client, token, password=NEW_PASSWORD), 404, "invalid_invitation")


def test_existing_user_joins_signed_in(api, client, owner):
    other = api.signup("globex", email="boss@globex.test")
    r = _invite(client, api.auth(owner), email="Boss@Globex.test", role="viewer")
    assert r.status_code == 201
    assert "user_id" not in r.get_json()  # the inviter learns nothing of the account
    token = mailed_invitation_token(client.application, "boss@globex.test")
    # holding the token is not enough to act as an existing account, and no password is checked
    assert_problem(_accept(client, token), 401, "sign_in_required")
    assert_problem(_accept(client, token, password="not my password"), 401, "sign_in_required")
    assert_problem(_accept(client, token, password=TEST_PASSWORD), 401, "sign_in_required")
    # signed in with its own token of the other tenant
    r = client.post("/api/v1/invitations/accept", json={"token": token}, headers=api.auth(other))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["user"]["id"] == other["user"]["id"]
    # the password did not change and both memberships work
    assert api.login("boss@globex.test", tenant="acme").status_code == 200
    assert api.login("boss@globex.test", tenant="globex").status_code == 200


def test_expired_and_unknown_invitations(api, client, owner, db_session):
    assert _invite(client, api.auth(owner)).status_code == 201
    token = mailed_invitation_token(client.application, "new@acme.test")
    db_session.execute(update(Invitation).values(expires_at=utcnow() - timedelta(seconds=1)))
    db_session.commit()
    assert_problem(_accept(client, token, password=NEW_PASSWORD), 404, "invalid_invitation")
    assert_problem(_accept(client, "x" * 43, password=NEW_PASSWORD), 404, "invalid_invitation")
    assert "token" in assert_problem(client.post("/api/v1/invitations/accept", json={}), 422)["errors"]


def test_invite_twice_is_409(api, client, owner):
    assert _invite(client, api.auth(owner)).status_code == 201
    assert_problem(_invite(client, api.auth(owner), email="NEW@acme.test"), 409, "already_member")
    assert_problem(_invite(client, api.auth(owner), email="owner@acme.test"), 409, "already_member")


def test_invite_validation(api, client, owner):
    body = assert_problem(_invite(client, api.auth(owner), email="nope", role="emperor"), 422)
    assert set(body["errors"]) == {"email", "role"}


def test_invite_beyond_own_role_is_403(app, client, owner):
    _, admin = role_headers(app, owner["tenant"]["id"], "admin")
    assert_problem(_invite(client, admin, role="owner"), 403, "role_not_assignable")
    assert _invite(client, admin, role="admin").status_code == 201


def test_member_cannot_invite_viewer_cannot_either(app, client, owner):
    for role in ("member", "viewer"):
        _, h = role_headers(app, owner["tenant"]["id"], role)
        body = assert_problem(_invite(client, h, email=f"{role}-invitee@acme.test"), 403, "permission_denied")
        assert body["permission"] == "members:manage"


def test_change_role_within_reach(api, app, client, owner, db_session):
    member, _ = role_headers(app, owner["tenant"]["id"], "member")
    _, admin = role_headers(app, owner["tenant"]["id"], "admin")
    r = client.patch(f"/api/v1/members/{member.id}", json={"role": "viewer"}, headers=admin)
    assert r.status_code == 200 and r.get_json()["role"] == "viewer"
    # admin cannot grant owner, nor touch the owner
    assert_problem(client.patch(f"/api/v1/members/{member.id}", json={"role": "owner"}, headers=admin), 403)
    owner_id = owner["user"]["id"]
    assert_problem(client.patch(f"/api/v1/members/{owner_id}", json={"role": "viewer"}, headers=admin), 403)
    assert_problem(client.delete(f"/api/v1/members/{owner_id}", headers=admin), 403, "role_not_assignable")
    assert_problem(client.patch(f"/api/v1/members/{member.id}", json={"role": "god"}, headers=admin), 422)
    # unknown member: 404
    assert_problem(
        client.patch(f"/api/v1/members/{uuid.uuid4()}", json={"role": "viewer"}, headers=admin), 404
    )
    role = db_session.scalar(select(Membership.role).where(Membership.user_id == member.id))
    assert role == "viewer"


def test_last_owner_can_neither_leave_nor_be_demoted(api, app, client, owner):
    h = api.auth(owner)
    me = owner["user"]["id"]
    assert_problem(
        client.patch(f"/api/v1/members/{me}", json={"role": "admin"}, headers=h), 409, "last_owner"
    )
    assert_problem(client.delete(f"/api/v1/members/{me}", headers=h), 409, "last_owner")
    # with a second owner, the first may step down or leave
    second, second_h = role_headers(app, owner["tenant"]["id"], "owner")
    r = client.patch(f"/api/v1/members/{me}", json={"role": "admin"}, headers=h)
    assert r.status_code == 200
    # now the second is the last owner
    assert_problem(client.delete(f"/api/v1/members/{second.id}", headers=second_h), 409, "last_owner")
    assert_problem(
        client.patch(f"/api/v1/members/{second.id}", json={"role": "member"}, headers=second_h),
        409,
        "last_owner",
    )


def test_member_may_leave_and_viewer_may_not_remove_others(api, app, client, owner):
    member, member_h = role_headers(app, owner["tenant"]["id"], "member")
    viewer, viewer_h = role_headers(app, owner["tenant"]["id"], "viewer")
    assert_problem(client.delete(f"/api/v1/members/{member.id}", headers=viewer_h), 403, "permission_denied")
    assert client.delete(f"/api/v1/members/{member.id}", headers=member_h).status_code == 204
    emails = [m["email"] for m in client.get("/api/v1/members", headers=api.auth(owner)).get_json()]
    assert member.email not in emails and viewer.email in emails
    events = client.get("/api/v1/audit-events?action=member.left", headers=api.auth(owner)).get_json()
    assert [e["target"]["id"] for e in events] == [str(member.id)]


def test_removing_an_invited_member_voids_the_invitation(api, client, owner):
    r = _invite(client, api.auth(owner)).get_json()
    token = mailed_invitation_token(client.application, "new@acme.test")
    members = client.get("/api/v1/members", headers=api.auth(owner)).get_json()
    listed = [m for m in members if m["user_id"] is None]
    assert [m["invitation_id"] for m in listed] == [r["invitation_id"]]
    r = client.delete(f"/api/v1/invitations/{r['invitation_id']}", headers=api.auth(owner))
    assert r.status_code == 204
    assert_problem(_accept(client, token, password=NEW_PASSWORD), 404, "invalid_invitation")


def test_concurrent_invitation_race_is_409(api, client, owner, monkeypatch):
    """Two admins invite the same new address at once: both miss the other's uncommitted user
    (simulated by hiding the existing one); the unique index makes the loser a 409, not a 500."""
    from saas.tenancy import members

    assert _invite(client, api.auth(owner), email="race@acme.test").status_code == 201
    monkeypatch.setattr(members, "find_user_by_email", lambda session, email: None)
    assert_problem(_invite(client, api.auth(owner), email="race@acme.test"), 409, "already_member")
    monkeypatch.undo()
    emails = [m["email"] for m in client.get("/api/v1/members", headers=api.auth(owner)).get_json()]
    assert emails.count("race@acme.test") == 1


def test_an_invited_owner_is_never_the_last_owner(api, client, owner):
    """The last-owner rule counts active owners only: a pending owner can be removed."""
    h = api.auth(owner)
    invited = _invite(client, h, email="pending-owner@acme.test", role="owner").get_json()
    r = client.delete(f"/api/v1/invitations/{invited['invitation_id']}", headers=h)
    assert r.status_code == 204, r.get_json()
